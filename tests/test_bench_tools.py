"""The benchmark's measuring helpers: the numbers every figure is built from."""

from __future__ import annotations

import sys
import textwrap

import pytest

from bench import baselines, measure
from bench.figures_edge import parse_wrk
from bench.report import figure

# A child that holds `MB` megabytes resident until it has slept, then exits.
_HOLD = "import sys,time; b=bytearray({mb}*2**20); b[::4096]=b'x'*len(b[::4096]); time.sleep(1)"


def test_run_reports_exit_code_and_output() -> None:
    result = measure.run("echo out; echo err >&2; exit 3")
    assert result.peak_rss_mb < 30  # a shell, not the benchmark's own inherited size
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.seconds > 0


def test_peak_rss_of_one_process_is_seen() -> None:
    result = measure.run([sys.executable, "-c", _HOLD.format(mb=80)])
    assert result.returncode == 0
    assert 80 <= result.peak_rss_mb < 200


def test_peak_rss_sums_the_whole_process_tree() -> None:
    # Two children of 60 MB each, alive at the same time: no single process reaches 100 MB,
    # so only the summed tree does.
    child = f"{sys.executable} -c \"{_HOLD.format(mb=60)}\""
    result = measure.run(f"{child} & {child} & wait")
    assert result.returncode == 0
    assert result.peak_rss_mb >= 120


def test_summarize_gives_median_min_max() -> None:
    s = measure.summarize([3.0, 1.0, 10.0, 2.0])
    assert (s.median, s.min, s.max, s.n) == (2.5, 1.0, 10.0, 4)
    with pytest.raises(ValueError):
        measure.summarize([])


def test_alternate_interleaves_and_flips_who_goes_first() -> None:
    order: list[str] = []
    subj, base = measure.alternate(
        lambda: order.append("s") or len(order), lambda: order.append("b") or len(order), 3
    )
    assert order == ["b", "s", "s", "b", "b", "s"]
    assert subj == [2, 3, 6] and base == [1, 4, 5]


def test_figure_ratio_and_target() -> None:
    fast = figure("f", "c", measure.summarize([1.0, 2.0, 3.0]), "s",
                  baseline=measure.summarize([4.0, 4.0, 5.0]), target=0.5)  # fmt: skip
    assert fast.ratio == 0.5 and fast.met is True and fast.runs == 3
    slow = figure("f", "c", measure.summarize([160.0]), "MB", target=150.0, target_of="value")
    assert slow.met is False and slow.ratio is None
    none = figure("f", "c", measure.summarize([1.0]), "s")
    assert none.met is None


def test_parse_wrk_reads_rate_and_p99_in_ms() -> None:
    out = textwrap.dedent("""\
        Running 3s test @ http://127.0.0.1:8080/index.html
          Latency Distribution
             50%    1.20ms
             75%    1.50ms
             90%    2.00ms
             99%  850.00us
          60000 requests in 3.00s, 10.00MB read
        Requests/sec:  20000.50
        Transfer/sec:      3.33MB
        """)
    assert parse_wrk(out) == (20000.5, 0.85)


def test_naive_pipeline_compresses_only_text(tmp_path: object) -> None:
    import io
    import tarfile
    from pathlib import Path

    root = Path(str(tmp_path))
    bundle = root / "b.tar.gz"
    with tarfile.open(bundle, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("site/a.html", b"<p>hi</p>" * 50), ("site/b.jpg", b"\xff" * 100)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1704067200
            tar.addfile(info, io.BytesIO(data))
    dest = root / "out"
    dest.mkdir()
    result = measure.run(baselines.naive_command(bundle, dest))
    assert result.returncode == 0, result.stderr
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == ["site/a.html", "site/a.html.gz", "site/b.jpg"]


def test_alternate_caps_a_slow_baseline() -> None:
    order: list[str] = []
    subj, base = measure.alternate(lambda: order.append("s"), lambda: order.append("b"), 3, 1)
    assert order == ["b", "s", "s", "s"]
    assert len(subj) == 3 and len(base) == 1


def test_synthetic_bundle_is_whole_with_a_git_like_header(tmp_path: object) -> None:
    import gzip
    import tarfile
    from pathlib import Path

    from bench import corpora

    path = Path(str(tmp_path)) / "t.tar.gz"
    writer = corpora._Writer(path, "seed")
    for name, data in corpora.tiny_entries("t", count=250):
        corpora._add_bytes(writer.tar, f"t/{name}", data)
    writer.close()
    raw = gzip.decompress(path.read_bytes())  # raises if the gzip trailer is missing
    assert raw.endswith(b"\0" * 1024)  # the tar end-of-archive marker
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert len(tar.pax_headers["comment"]) == 40
    assert len(names) == 250 and all(n.startswith("t/d000") for n in names)


def test_merge_keeps_figures_not_measured_again(tmp_path: object) -> None:
    import json
    from pathlib import Path

    from bench.report import write_json

    path = Path(str(tmp_path)) / "latest.json"
    one = figure("a", "c", measure.summarize([1.0]), "s")
    two = figure("b", "c", measure.summarize([2.0]), "s")
    write_json(path, [one, two], ["edge (figure 6): failed: x", "s3 (figure 5): y"], {"runs": 1})
    again = figure("b", "c", measure.summarize([3.0]), "s")
    write_json(path, [again], [], {"runs": 1}, merge=True, sections=("edge (figure 6)",))
    doc = json.loads(path.read_text())
    assert [(f["figure"], f["value"]) for f in doc["figures"]] == [("a", 1.0), ("b", 3.0)]
    assert doc["not_available"] == ["s3 (figure 5): y"]
    assert len(doc["runs"]) == 2
