"""Results: one `Figure` per figure and corpus, printed as a rich table and saved as JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.measure import Summary


@dataclass
class Figure:
    """One figure: the subject's median and range, the baseline's, their ratio and the target.

    `target_of` says what the target bounds ("ratio" or "value") and `target_op` how ("<=",
    ">=", "<", "=="); `met` is None when there is no target.
    """

    figure: str
    corpus: str
    value: float
    unit: str
    baseline: float | None
    ratio: float | None
    target: float | None
    runs: int
    peak_rss_mb: float | None
    value_min: float | None = None
    value_max: float | None = None
    baseline_name: str | None = None
    baseline_runs: int | None = None
    baseline_min: float | None = None
    baseline_max: float | None = None
    baseline_peak_rss_mb: float | None = None
    target_of: str = "ratio"
    target_op: str = "<="
    met: bool | None = None
    note: str = ""
    extra: dict[str, float | int | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.met = self._met()

    def _met(self) -> bool | None:
        if self.target is None:
            return None
        got = self.ratio if self.target_of == "ratio" else self.value
        if got is None:
            return None
        return {
            "<=": got <= self.target,
            "<": got < self.target,
            ">=": got >= self.target,
            "==": got == self.target,
        }[self.target_op]


def figure(
    name: str,
    corpus: str,
    subject: Summary,
    unit: str,
    *,
    baseline: Summary | None = None,
    baseline_name: str | None = None,
    target: float | None = None,
    target_of: str = "ratio",
    target_op: str = "<=",
    peak_rss_mb: float | None = None,
    baseline_peak_rss_mb: float | None = None,
    note: str = "",
) -> Figure:
    """Build a Figure from summaries; the ratio is always subject over baseline."""
    ratio = None
    if baseline is not None and baseline.median > 0:
        ratio = subject.median / baseline.median
    return Figure(
        figure=name,
        corpus=corpus,
        value=round(subject.median, 4),
        unit=unit,
        baseline=None if baseline is None else round(baseline.median, 4),
        ratio=None if ratio is None else round(ratio, 3),
        target=target,
        runs=subject.n,
        peak_rss_mb=None if peak_rss_mb is None else round(peak_rss_mb, 1),
        value_min=round(subject.min, 4),
        value_max=round(subject.max, 4),
        baseline_name=baseline_name,
        baseline_runs=None if baseline is None else baseline.n,
        baseline_min=None if baseline is None else round(baseline.min, 4),
        baseline_max=None if baseline is None else round(baseline.max, 4),
        baseline_peak_rss_mb=None
        if baseline_peak_rss_mb is None
        else round(baseline_peak_rss_mb, 1),
        target_of=target_of,
        target_op=target_op,
        note=note,
    )


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def table(figures: list[Figure], missing: list[str], title: str) -> Table:
    """The terminal table: one row per figure and corpus."""
    t = Table(title=title)
    for col in ("figure", "corpus", "value (min–max)", "baseline", "ratio", "target", "RSS MB"):
        t.add_column(col, justify="left" if col in ("figure", "corpus") else "right")
    for f in figures:
        mark = {True: "[green]ok[/]", False: "[red]MISSED[/]", None: ""}[f.met]
        target = "" if f.target is None else f"{f.target_of} {f.target_op} {_fmt(f.target)} {mark}"
        base = "—" if f.baseline is None else f"{_fmt(f.baseline)} ({f.baseline_name})"
        t.add_row(
            f.figure,
            f.corpus,
            f"{_fmt(f.value)} {f.unit} ({_fmt(f.value_min)}–{_fmt(f.value_max)})",
            base,
            _fmt(f.ratio),
            target,
            _fmt(f.peak_rss_mb),
        )
    for reason in missing:
        t.add_row("[yellow]not available[/]", "", reason, "", "", "", "")
    return t


def machine() -> dict[str, str | int]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count() or 0,
        "cpu": cpu,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_avg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def write_json(
    path: Path,
    figures: list[Figure],
    missing: list[str],
    args: dict[str, object],
    merge: bool = False,
    sections: tuple[str, ...] = (),
) -> None:
    """The results file: one entry per figure and corpus, plus what ran where and when.

    With `merge`, figures of an earlier file that this run did not measure are kept (each entry
    keeps its own `date`), so one group can be measured again without redoing the rest; an old
    "not available" line is dropped when its section (in `sections`) ran again.
    """
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entries = [{**asdict(f), "date": now} for f in figures]
    runs: list[object] = [{**args, "date": now, "machine": machine()}]
    if merge and path.exists():
        old = json.loads(path.read_text())
        fresh = {(e["figure"], e["corpus"]) for e in entries}
        kept = [
            {"date": old.get("date"), **e}
            for e in old.get("figures", [])
            if (e["figure"], e["corpus"]) not in fresh
        ]
        entries = kept + entries
        earlier = old.get("runs") or [
            {**old.get("args", {}), "date": old.get("date"), "machine": old.get("machine")}
        ]
        runs = [*earlier, *runs]
        again = set(sections)
        missing = [m for m in old.get("not_available", []) if _label(m) not in again] + missing
    doc = {
        "date": now,
        "machine": machine(),
        "runs": runs,
        "figures": entries,
        "not_available": missing,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def _label(missing_line: str) -> str:
    return missing_line.split(": ", 1)[0]


def print_table(figures: list[Figure], missing: list[str], title: str) -> None:
    Console(width=160).print(table(figures, missing, title))


def markdown(doc: dict[str, object]) -> str:
    """The results file as a Markdown table, for bench/README.md."""
    figures = doc["figures"]
    assert isinstance(figures, list)
    lines = [
        "| figure | corpus | value (min–max) | baseline | ratio | target | met | RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        base = "—" if f["baseline"] is None else f"{_fmt(f['baseline'])} ({f['baseline_name']})"
        target = "" if f["target"] is None else f"{f['target_of']} {f['target_op']} {f['target']}"
        met = {True: "yes", False: "**no**", None: ""}[f["met"]]
        value = f"{_fmt(f['value'])} {f['unit']} ({_fmt(f['value_min'])}–{_fmt(f['value_max'])})"
        lines.append(
            f"| {f['figure']} | {f['corpus']} | {value} | {base} | {_fmt(f['ratio'])} | "
            f"{target} | {met} | {_fmt(f['peak_rss_mb'])} |"
        )
    missing = doc.get("not_available") or []
    assert isinstance(missing, list)
    lines += ["", *(f"- not available: {m}" for m in missing)]
    return "\n".join(lines)
