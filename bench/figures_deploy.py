"""Figures 1, 2, 3a and 7: `pushsite deploy` of a bundle into the local store.

1. cold deploy per corpus against the naive C pipeline (target: at most 0.5 of its time on the
   real corpora), and its ratio to the floor (`gzip -dc`);
2. peak RSS of the deploy's process tree (target: at most 150 MB on every corpus);
3a. the same store, one HTML file changed: exactly one new blob, and no dearer than reading the
   bundle once (`tar -xzOf > /dev/null`);
7. the 100,000-file bundle: time per file into a store already holding 100,000 * k files, against
   the same bundle into an empty store (must not grow).
"""

from __future__ import annotations

from pathlib import Path

from bench import baselines, corpora, product
from bench.corpora import Corpus
from bench.measure import alternate, summarize
from bench.report import Figure, figure

REAL = ("small", "medium", "large")


def cold_deploy(corpus: Corpus, runs: int) -> tuple[list[Figure], Path]:
    """Figures 1 and 2 for one corpus; returns them and a home holding one deployment of it.

    On the synthetic corpora (no target against the naive pipeline) the naive pipeline runs
    once: on 100,000 files it costs minutes of file creation and removal.
    """
    homes: list[Path] = []
    floors: list[float] = []
    befores: list[product.Deploy] = []

    def before() -> None:
        """The same deploy with every variant made before it goes live (as before issue 20)."""
        home = product.fresh_home(corpus.name + "-before")
        try:
            befores.append(product.deploy(corpus.bundle, home, env={"PUSHSITE_LIVE_FIRST": "0"}))
        finally:
            product.remove(home)

    def subject() -> product.Deploy:
        home = product.fresh_home(corpus.name)
        homes.append(home)
        floors.append(baselines.floor(corpus.bundle).seconds)
        if len(homes) % 2:
            before()
        done = product.deploy(corpus.bundle, home)
        if not len(homes) % 2:
            before()
        return done

    base_runs = None if corpus.name in REAL else 1
    deploys, naives = alternate(subject, lambda: baselines.naive(corpus.bundle), runs, base_runs)
    for home in homes[:-1]:
        product.remove(home)
    secs = summarize([d.run.seconds for d in deploys])
    rss = max(d.run.peak_rss_mb for d in deploys)
    last = deploys[-1].doc
    note = f"files={last.get('files')} blobs_new={last.get('blobs_new')}"
    note += f" bytes_stored={last.get('bytes_stored')}"
    real = corpus.name in REAL
    figs = [
        figure(
            "cold_deploy",
            corpus.name,
            secs,
            "s",
            baseline=summarize([n.seconds for n in naives]),
            baseline_name="naive tar+gzip -P2",
            target=0.5 if real else None,
            peak_rss_mb=rss,
            baseline_peak_rss_mb=max(n.peak_rss_mb for n in naives),
            note=note,
        ),
        figure(
            "cold_deploy_vs_floor",
            corpus.name,
            secs,
            "s",
            baseline=summarize(floors),
            baseline_name="gzip -dc",
            peak_rss_mb=rss,
        ),
        figure(
            "peak_memory",
            corpus.name,
            summarize([d.run.peak_rss_mb for d in deploys]),
            "MB",
            baseline=summarize([n.peak_rss_mb for n in naives]),
            baseline_name="naive tar+gzip -P2",
            target=100.0,  # issue 20: at most 100 MB up to the file limit
            target_of="value",
            peak_rss_mb=rss,
        ),
    ]
    lives = [d.run.first_output for d in deploys if d.run.first_output is not None]
    if lives:
        figs.append(figure(
            "time_to_live_vs_floor",
            corpus.name,
            summarize(lives),
            "s",
            baseline=summarize(floors),
            baseline_name="gzip -dc",
            target=2.0 if real else None,  # issue 20: small, medium, large
            peak_rss_mb=rss,
            note="until `pushsite deploy --json` printed the live deployment (brotli after)",
        ))
    figs.append(figure(
        "all_variants_vs_before",
        corpus.name,
        secs,
        "s",
        baseline=summarize([b.run.seconds for b in befores]),
        baseline_name="every variant before live (PUSHSITE_LIVE_FIRST=0)",
        target=1.0 if real else None,
        peak_rss_mb=rss,
        baseline_peak_rss_mb=max(b.run.peak_rss_mb for b in befores),
    ))
    return figs, homes[-1]


def incremental_bundle(corpus: Corpus, home: Path, runs: int) -> list[Figure]:
    """Figure 3a: one HTML file changed, deployed as a bundle into a store that has the rest."""
    bundles = [corpora.changed_bundle(corpus, f"r{i}") for i in range(runs)]
    todo = iter(bundles)
    base_todo = iter(bundles)
    deploys, reads = alternate(
        lambda: product.deploy(next(todo), home),
        lambda: baselines.read_once(next(base_todo)),
        runs,
    )
    new = [int(str(d.doc.get("blobs_new", -1))) for d in deploys]
    rss = max(d.run.peak_rss_mb for d in deploys)
    return [
        figure(
            "incremental_bundle",
            corpus.name,
            summarize([d.run.seconds for d in deploys]),
            "s",
            baseline=summarize([r.seconds for r in reads]),
            baseline_name="tar -xzOf (read once)",
            target=1.0,
            peak_rss_mb=rss,
            note=f"blobs_new per run: {new}",
        ),
        figure(
            "incremental_blobs_new",
            corpus.name,
            summarize([float(n) for n in new]),
            "blobs",
            target=1.0,
            target_of="value",
            target_op="==",
            peak_rss_mb=rss,
        ),
    ]


def scale(home_with_tiny: Path, runs: int) -> list[Figure]:
    """Figure 7: microseconds per file into a store growing by 100,000 files a run."""
    variants = [corpora.get(f"tiny100k-v{i}") for i in range(runs)]
    full_todo = iter(variants)
    empty_todo = iter(variants)
    stored: list[int] = []
    empties: list[Path] = []

    def into_full() -> float:
        v = next(full_todo)
        stored.append(corpora.TINY_FILES * (len(stored) + 1))
        return product.deploy(v.bundle, home_with_tiny).run.seconds * 1e6 / v.files

    def into_empty() -> float:
        v = next(empty_todo)
        home = product.fresh_home("scale")
        empties.append(home)
        try:
            return product.deploy(v.bundle, home).run.seconds * 1e6 / v.files
        finally:
            product.remove(home)

    full, empty = alternate(into_full, into_empty, runs)
    trend = ", ".join(f"{s // 1000}k stored: {u:.0f} us" for s, u in zip(stored, full, strict=True))
    return [
        figure(
            "scale_time_per_file",
            "tiny100k",
            summarize(full),
            "us/file",
            baseline=summarize(empty),
            baseline_name="same bundle, empty store",
            target=1.25,
            note=f"into a store already holding: {trend}",
        )
    ]


def memory_by_workers(corpus: Corpus, counts: tuple[int, ...] = (1, 8)) -> list[Figure]:
    """Figure 2 again with the worker setting forced (PUSHSITE_WORKERS): memory must not follow."""
    figs = []
    for workers in counts:
        home = product.fresh_home(f"workers{workers}")
        try:
            done = product.deploy(corpus.bundle, home, env={"PUSHSITE_WORKERS": str(workers)})
        finally:
            product.remove(home)
        figs.append(
            figure(
                f"peak_memory_{workers}_workers",
                corpus.name,
                summarize([done.run.peak_rss_mb]),
                "MB",
                target=150.0,
                target_of="value",
                peak_rss_mb=done.run.peak_rss_mb,
                note=f"PUSHSITE_WORKERS={workers}; deploy took {done.run.seconds:.1f} s",
            )
        )
    return figs


def incremental_memory(corpus: Corpus, home: Path, runs: int) -> list[Figure]:
    """Figure 2 on a redeploy: the same bundle into the store that holds it, so the previous
    deployment's tables are read (issue 20: at most 100 MB up to the file limit)."""
    deploys = [product.deploy(corpus.bundle, home) for _ in range(runs)]
    return [figure(
        "peak_memory_incremental",
        corpus.name,
        summarize([d.run.peak_rss_mb for d in deploys]),
        "MB",
        target=100.0,
        target_of="value",
        peak_rss_mb=max(d.run.peak_rss_mb for d in deploys),
        note=f"redeploy took {summarize([d.run.seconds for d in deploys]).median:.1f} s",
    )]
