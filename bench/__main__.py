"""`python -m bench [--small] [--runs N] [--only GROUPS]`: run the figures, print, save JSON.

Groups, in the order they run: deploy (figures 1, 2, 3a, 7), compute (1c: figure 1 with
both sides on tmpfs), git (3b, 4), remote (8: deploy --server's incremental uploads), s3 (5),
edge (6), awsedge (6d: the edge over S3 + DynamoDB against local + SQLite, and its DynamoDB
reads), metrics (6m: the edge with metrics on against off), tls (6t: the edge over HTTPS
against nginx with the same certificate), bigsite (6b), build (9: a Hugo site pushed against
bare hugo, warm against cold build cache, the sandbox's start-up).
A figure whose feature has not landed is listed as "not available: <why>" and left out of the
JSON; a figure whose run failed is listed the same way with the error. Nothing is faked.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from bench import (
    baselines,
    corpora,
    figures_awsedge,
    figures_bigsite,
    figures_build,
    figures_compute,
    figures_deploy,
    figures_edge,
    figures_git,
    figures_metrics,
    figures_remote,
    figures_s3,
    figures_tls,
    product,
)
from bench.errors import BenchError
from bench.measure import alternate, summarize
from bench.report import Figure, figure, print_table, write_json

GROUPS = ("deploy", "compute", "git", "remote", "s3", "edge", "awsedge", "metrics", "tls",
          "bigsite", "build")
RESULTS = Path(__file__).parent / "results" / "latest.json"


class Collector:
    """Figures and not-available lines, gathered section by section."""

    def __init__(self) -> None:
        self.figures: list[Figure] = []
        self.missing: list[str] = []
        self.sections: list[str] = []

    def section(self, label: str, why_missing: str, run: Callable[[], list[Figure]]) -> None:
        self.sections.append(label)
        if why_missing:
            self.missing.append(f"{label}: {why_missing}")
            print(f"not available: {label}: {why_missing}", flush=True)
            return
        started = time.monotonic()
        print(f"running {label} ...", flush=True)
        try:
            got = run()
        except BenchError as exc:
            self.missing.append(f"{label}: failed: {exc}")
            print(f"failed: {label}: {exc}", flush=True)
            return
        self.figures.extend(got)
        print(f"  {label} done in {time.monotonic() - started:.0f} s", flush=True)


def _baselines_only(corpus: corpora.Corpus, runs: int) -> list[Figure]:
    """Without pushsite deploy: the naive pipeline and the floor alone, so they can be checked."""
    naives, floors = alternate(
        lambda: baselines.naive(corpus.bundle), lambda: baselines.floor(corpus.bundle), runs
    )
    return [
        figure("baseline_naive", corpus.name, summarize([n.seconds for n in naives]), "s",
               baseline=summarize([f.seconds for f in floors]), baseline_name="gzip -dc",
               peak_rss_mb=max(n.peak_rss_mb for n in naives),
               note="naive tar xzf + gzip -6 -k (xargs -P2) alone: pushsite deploy not there"),
    ]  # fmt: skip


def _deploy_group(out: Collector, small: bool, runs: int, only: set[str]) -> None:
    why = product.missing_command("deploy", option="--json")
    incremental = "medium" if small else "large"
    for name in corpora.names(small):
        if only and name not in only:
            continue
        corpus = corpora.get(name)
        if why:
            out.section(f"baselines on {name}", "", lambda c=corpus: _baselines_only(c, runs))
            out.section(f"cold deploy on {name}", why, list)
            continue
        homes: list[Path] = []

        def cold(c: corpora.Corpus = corpus, kept: list[Path] = homes) -> list[Figure]:
            figs, home = figures_deploy.cold_deploy(c, runs)
            kept.append(home)
            return figs

        out.section(f"cold deploy on {name} (figures 1, 2)", "", cold)
        if not homes:
            continue
        if name == incremental:
            out.section(
                f"incremental bundle on {name} (figure 3a)",
                "",
                lambda c=corpus, h=homes[0]: figures_deploy.incremental_bundle(c, h, runs),
            )
        if name == "large":
            out.section(
                "peak memory by worker count on large (figure 2)",
                "",
                lambda c=corpus: figures_deploy.memory_by_workers(c),
            )
        if name == "tiny100k":
            out.section(
                "scale (figure 7)", "", lambda h=homes[0]: figures_deploy.scale(h, runs)
            )
        if name in ("tiny100k", "tiny200k"):
            out.section(
                f"incremental peak memory on {name} (figure 2)", "",
                lambda c=corpus, h=homes[0]: figures_deploy.incremental_memory(c, h, runs),
            )
        product.remove(homes[0])
    if small or (only and "tiny100k" not in only):
        out.missing.append("scale (figure 7): skipped (needs the tiny100k corpus)")


def _git_group(out: Collector, small: bool, runs: int) -> None:
    why = figures_git.missing()
    medium = corpora.get("medium")
    out.section("git push to live on medium (figure 4)", why,
                lambda: figures_git.first_and_one_file(medium, runs))  # fmt: skip
    if small:
        out.missing.append("incremental git push on large (figure 3b): skipped with --small")
        return
    large = corpora.get("large")
    out.section("incremental git push on large (figure 3b)", why,
                lambda: figures_git.incremental_push(large, runs))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--small", action="store_true", help="only the small corpora")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--only", default=",".join(GROUPS), help="groups: " + ",".join(GROUPS))
    parser.add_argument("--corpora", default="", help="deploy figures on these corpora only")
    parser.add_argument("--edge-seconds", type=int, default=0, help="wrk duration per run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    keep = "keep the figures of --out that this run does not measure"
    parser.add_argument("--merge", action="store_true", help=keep)
    args = parser.parse_args(argv)
    only = {g.strip() for g in args.only.split(",") if g.strip()}
    unknown = only - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {', '.join(sorted(unknown))}; known: {', '.join(GROUPS)}")
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, not {args.runs}")
    out = Collector()
    started = time.monotonic()
    edge_seconds = args.edge_seconds or (2 if args.small else 8)  # wrk per run, every edge group
    if "deploy" in only:
        chosen = {c.strip() for c in args.corpora.split(",") if c.strip()}
        _deploy_group(out, args.small, args.runs, chosen)
    if "compute" in only:
        for corpus in figures_compute.chosen(args.corpora, args.small):
            out.section(f"cold deploy on tmpfs, compute only, on {corpus.name} (figure 1c)",
                        figures_compute.missing(),
                        lambda c=corpus: figures_compute.compute(c, args.runs))  # fmt: skip
    if "git" in only:
        _git_group(out, args.small, args.runs)
    if "remote" in only:
        medium = corpora.get("medium")
        out.section("deploy --server, incremental uploads, on medium (figure 8)",
                    figures_remote.missing(),
                    lambda: figures_remote.remote_upload(medium, args.runs))  # fmt: skip
    if "s3" in only:
        medium = corpora.get("medium")
        s3_runs = 1 if args.small else args.runs  # ~40 s a run: keeps --small near 3 minutes
        out.section("S3 deploy against aws s3 sync on medium (figure 5)", figures_s3.missing(),
                    lambda: figures_s3.s3(medium, s3_runs))  # fmt: skip
    if "edge" in only:
        medium = corpora.get("medium")
        why = product.missing_command("serve") or product.missing_command("deploy")
        out.section("edge against nginx (figure 6)", why,
                    lambda: figures_edge.edge(medium, args.runs, edge_seconds))  # fmt: skip
    if "awsedge" in only:
        medium = corpora.get("medium")
        out.section("edge over S3 + DynamoDB against local + SQLite (figure 6d)",
                    figures_awsedge.missing(),
                    lambda: figures_awsedge.aws_edge(medium, args.runs, edge_seconds))  # fmt: skip
    if "metrics" in only:
        medium = corpora.get("medium")
        why = product.missing_command("serve") or product.missing_command("deploy")
        out.section("edge with metrics on against off (figure 6m)", why,
                    lambda: figures_metrics.edge_metrics(medium, args.runs,
                                                         edge_seconds))  # fmt: skip
    if "tls" in only:
        medium = corpora.get("medium")
        why = product.missing_command("serve", option="--tls-cert")
        out.section("edge over HTTPS against nginx ssl (figure 6t)", why,
                    lambda: figures_tls.tls(medium, args.runs, edge_seconds))  # fmt: skip
    if "bigsite" in only and not args.small:
        why = product.missing_command("serve") or product.missing_command("deploy")
        out.section("a 200,000-file site's cache misses (figure 6b)", why,
                    lambda: figures_bigsite.bigsite(args.runs))  # fmt: skip
    if "build" in only:
        why = figures_build.missing()
        out.section("builds: a 1,000-page Hugo site pushed, against bare hugo (figure 9a)", why,
                    lambda: figures_build.push_figures(args.runs))  # fmt: skip
        out.section("builds: warm build cache against cold (figure 9b)", why,
                    lambda: figures_build.cache_figures(args.runs))  # fmt: skip
        out.section("builds: the sandbox's start-up (figure 9c)", why,
                    lambda: figures_build.sandbox_figures(args.runs))  # fmt: skip
    elapsed = time.monotonic() - started
    title = f"pushsite bench ({'small' if args.small else 'full'}, {args.runs} runs, "
    title += f"{elapsed:.0f} s)"
    print_table(out.figures, out.missing, title)
    run_args = {"small": args.small, "runs": args.runs, "only": sorted(only),
                "seconds": round(elapsed)}  # fmt: skip
    write_json(args.out, out.figures, out.missing, run_args, args.merge, tuple(out.sections))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
