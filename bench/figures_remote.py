"""Figures 8a-8c: `pushsite deploy DIR --server` with incremental uploads, against today's
full upload (the bundle streamed whole, as `pushsite deploy - --server` still does).

8a: a redeploy of the medium corpus with one file changed (target: at most 0.1 of the full
upload's time in the same run); 8b: the bytes the client sent on the wire for it, counted by
a TCP proxy (target: at most the changed file plus twice the file list); 8c: a first deploy
to an empty site (target: at most 1.1 of the full upload's time).

Every deploy here is `--json` with the server and token given, so both sides take the quick
path (launch.py: no CLI, no httpx): the figures compare the two ways of sending, not two
clients. The first deploy of each run sends the folder as one packed tar.gz (the site holds
nothing to reuse); the client's hash cache is the user's (~/.cache/pushsite), so the first
run's first deploy hashes every file and the others only the one changed since.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from pathlib import Path

from bench import product
from bench.corpora import Corpus, scratch_dir
from bench.errors import BenchError
from bench.measure import Run, Summary, run, summarize
from bench.report import Figure, figure
from bench.wire import counting_proxy


def missing() -> str:
    return product.missing_command("deploy", option="--server")


def _unpack(corpus: Corpus) -> Path:
    """The corpus as a folder (its bundle's single top folder)."""
    root = Path(tempfile.mkdtemp(prefix=f"remote-{corpus.name}-", dir=scratch_dir()))
    with tarfile.open(corpus.bundle) as tar:
        tar.extractall(root, filter="tar")  # keeps its links as links (the site's own)
    tops = [p for p in root.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise BenchError(f"the {corpus.name} bundle does not hold one top folder")
    return tops[0]


def _pack(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname="site")
    return out


def _deploy(source: str, site: str, server: str, token: str, client: Path,
            stdin: Path | None = None) -> Run:
    argv = [*product.pushsite_argv(), "deploy", source, "--site", site, "--server", server,
            "--token", token, "--json"]
    command = " ".join(f"'{a}'" for a in argv) + (f" < '{stdin}'" if stdin else "")
    result = run(command, env={"PUSHSITE_HOME": str(client)})
    if result.returncode != 0:
        raise BenchError(f"deploy --server of {source} failed ({result.returncode}): "
                         f"{result.stderr.strip()[-300:]}")
    if json.loads(result.stdout).get("status") != "live":
        raise BenchError(f"deploy --server of {source} did not go live")
    return result


def _seconds(runs: list[Run]) -> Summary:
    return summarize([r.seconds for r in runs])


def _peak(runs: list[Run]) -> float:
    """The client's peak RSS, the most of any run."""
    return max(r.peak_rss_mb for r in runs)


def _median(values: list[int]) -> int:
    return sorted(values)[len(values) // 2] if values else 0


def _list_bytes(folder: Path) -> int:
    from pushsite.deploy.filelist import list_folder

    rows = list_folder(folder).rows
    return len(json.dumps({"files": [r.to_json() for r in rows]}))


def remote_upload(corpus: Corpus, runs: int) -> list[Figure]:
    folder = _unpack(corpus)
    home = product.fresh_home("remote")
    client = home / "client"
    try:
        with product.Server(home) as srv:
            token = srv.create_token()
            with counting_proxy(srv.port) as (port, counts):
                url = f"http://127.0.0.1:{port}"
                firsts: list[Run] = []
                fulls: list[Run] = []
                redeploys: list[Run] = []
                full_again: list[Run] = []
                wire: list[tuple[int, int]] = []
                first_sent: tuple[list[int], list[int]] = ([], [])  # bytes up: full, first
                page = folder / corpus.change_path
                for i in range(runs):
                    for name in (f"inc{i}", f"full{i}"):
                        srv.create_site(name)
                    bundle = _pack(folder, home / f"site{i}.tar.gz")
                    # first deploys to empty sites: incremental against today's full upload
                    counts.reset()
                    fulls.append(_deploy("-", f"full{i}", url, token, client, bundle))
                    first_sent[0].append(counts.up)
                    counts.reset()
                    firsts.append(_deploy(str(folder), f"inc{i}", url, token, client))
                    first_sent[1].append(counts.up)
                    # one file changed: both again, in the same run
                    with open(page, "a") as fh:
                        fh.write(f"\n<!-- remote bench {i} -->\n")
                    changed = page.stat().st_size
                    bundle = _pack(folder, home / f"site{i}b.tar.gz")
                    full_again.append(_deploy("-", f"full{i}", url, token, client, bundle))
                    counts.reset()
                    redeploys.append(_deploy(str(folder), f"inc{i}", url, token, client))
                    wire.append((counts.up, changed + 2 * _list_bytes(folder)))
        sent = summarize([float(up) for up, _ in wire])
        allowed = max(limit for _, limit in wire)
        return [
            figure("8a --server redeploy, one file changed", corpus.name,
                   _seconds(redeploys), "s", baseline=_seconds(full_again),
                   baseline_name="full upload (today)", target=0.1,
                   peak_rss_mb=_peak(redeploys), baseline_peak_rss_mb=_peak(full_again)),
            figure("8b bytes sent for it", corpus.name, sent, "bytes", target=float(allowed),
                   target_of="value", note="client to server on the wire; target: the "
                   "changed file plus twice the file list"),
            figure("8c first --server deploy", corpus.name, _seconds(firsts), "s",
                   baseline=_seconds(fulls), baseline_name="full upload (today)",
                   peak_rss_mb=_peak(firsts), baseline_peak_rss_mb=_peak(fulls),
                   target=1.1, note=f"bytes sent (medians): first deploy "
                   f"{_median(first_sent[1]):,}, full upload {_median(first_sent[0]):,} (the "
                   "packed folder goes stored or compressed as its sends measure faster)"),
        ]
    finally:
        product.remove(home)
        shutil.rmtree(folder.parent, ignore_errors=True)
