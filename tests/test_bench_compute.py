"""The bench's compute-only cold deploy (figure 1c): both sides on tmpfs, both pushsite modes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from bench import figures_compute
from bench.corpora import Corpus
from support.disk import tmpfs


def test_a_folder_on_disk_is_not_taken_for_a_tmpfs(tmp_path: Path) -> None:
    assert "not a tmpfs mount point" in figures_compute.missing(tmp_path)
    assert "not a writable folder" in figures_compute.missing(tmp_path / "absent")


def test_compute_measures_both_modes_against_the_naive_pipeline_and_cleans_up(
        tmp_path: Path) -> None:
    with tmpfs(tmp_path / "shm", "64m") as shm:  # a tmpfs of its own: never skipped
        _measure_both_modes(tmp_path, shm)


def _measure_both_modes(tmp_path: Path, shm: Path) -> None:
    assert figures_compute.missing(shm) == ""
    bundle = tmp_path / "tiny.tar.gz"
    with tarfile.open(bundle, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("site/index.html", b"<p>hello</p>" * 400),
                           ("site/app.js", b"let x = 1;\n" * 500), ("site/a.png", b"\x89" * 99)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1704067200
            tar.addfile(info, io.BytesIO(data))
    corpus = Corpus("tiny", True, bundle, None, "index.html", 3, 0)
    figs = {f.figure: f for f in figures_compute.compute(corpus, 2, shm)}
    assert set(figs) == {"compute_cold_deploy", "compute_live_first_total",
                         "compute_time_to_live", "compute_cold_deploy_cpu"}
    cpu = figs["compute_cold_deploy_cpu"]
    assert cpu.value > 0 and cpu.baseline is not None and cpu.baseline > 0
    cold = figs["compute_cold_deploy"]
    assert cold.runs == 2 and cold.baseline is not None and cold.ratio is not None
    assert cold.baseline_name == "naive tar+gzip -P2 on tmpfs"
    assert "files=3" in cold.note
    assert figs["compute_time_to_live"].value <= figs["compute_live_first_total"].value
    # the homes, extractions and bundle copy are gone
    assert not list(shm.glob("pushsite-compute-tiny-*"))
