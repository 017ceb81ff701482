"""The metrics /metrics shows, in the Prometheus text format (prometheus_client renders it).

Counters come from the home's metrics.db (state/counters.py), which every process adds to:
deployments by status and source, bytes read and stored, new and reused blobs, stage
durations (histograms: read, which streams reading, hashing and storing in one pass; activate;
total), notification and commit-status deliveries by outcome, and edge requests by status
class and answer-cache hit. Gauges are read at scrape time: queued deployments and the age of
the oldest, and the edge's hit ratio.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from pushsite.model import Status

if TYPE_CHECKING:
    from pushsite.service.running import Running

# what generate_latest writes: the classic text format, which every Prometheus reads
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_QUEUE_PAGE = 1000
_QUEUE_PAGES = 10  # queue depth counts at most 10,000 (more is "very deep" anyway)

_HELP = {
    "pushsite_deployments": "Deployments that ended, by final status and source.",
    "pushsite_deploy_bytes_read": "Bytes of files read by successful deployments.",
    "pushsite_deploy_bytes_stored": "Bytes written to the store by successful deployments.",
    "pushsite_blobs": "Blobs of successful deployments: new (stored) or reused.",
    "pushsite_notifications": "Deliveries of notifications (webhook) and commit statuses, by "
                              "outcome: delivered, retrying, gave_up, skipped.",
    "pushsite_edge_requests": "Edge requests by status class and answer-cache hit.",
    "pushsite_deploy_stage_seconds": "Deployment stage durations: read (read, hashed and "
                                     "stored in one pass), activate, total.",
}


class _Collector:
    def __init__(self, service: Running) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        values = self.service.counters.read()
        counters: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        buckets: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] = {}
        for (name, labels), value in sorted(values.items()):
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name.removesuffix(suffix) in _HELP:
                    base = name.removesuffix(suffix)
                    rest = tuple(pair for pair in labels if pair[0] != "le")
                    entry = buckets.setdefault((base, rest), {"buckets": {}, "sum": 0.0})
                    if suffix == "_bucket":
                        entry["buckets"][dict(labels)["le"]] = value
                    elif suffix == "_sum":
                        entry["sum"] = value
                    break
            else:
                counters[name.removesuffix("_total")].append((dict(labels), value))
        for name, rows in counters.items():
            label_names = sorted({k for row_labels, _ in rows for k in row_labels})
            family = CounterMetricFamily(name, _HELP.get(name, name), labels=label_names)
            for row_labels, total in rows:
                family.add_metric([row_labels.get(k, "") for k in label_names], total)
            yield family
        yield from self._histograms(buckets)
        yield from self._edge_ratio(counters.get("pushsite_edge_requests", []))
        yield from self._queue()

    @staticmethod
    def _histograms(found: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]]
                    ) -> Iterator[Metric]:
        families: dict[str, HistogramMetricFamily] = {}
        bounds: dict[str, set[str]] = defaultdict(set)  # a bound no observation reached is 0
        for (name, _), entry in found.items():
            bounds[name].update(entry["buckets"])
        for (name, labels), entry in sorted(found.items()):
            for bound in bounds[name]:
                entry["buckets"].setdefault(bound, 0.0)
            names = [k for k, _ in labels]
            family = families.get(name)
            if family is None:
                family = families[name] = HistogramMetricFamily(name, _HELP[name], labels=names)
            ordered = sorted(entry["buckets"].items(),
                             key=lambda item: float("inf") if item[0] == "+Inf" else float(item[0]))
            family.add_metric([v for _, v in labels], ordered, entry["sum"])
        yield from families.values()

    @staticmethod
    def _edge_ratio(rows: list[tuple[dict[str, str], float]]) -> Iterator[Metric]:
        total = sum(value for _, value in rows)
        hits = sum(value for labels, value in rows if labels.get("cache") == "hit")
        yield GaugeMetricFamily("pushsite_edge_cache_hit_ratio", "Edge requests answered from "
                                "the answer cache, of all edge requests so far (0 before any).",
                                value=hits / total if total else 0.0)

    def _queue(self) -> Iterator[Metric]:
        state = self.service.state
        depth, oldest, before = 0, None, None
        for _ in range(_QUEUE_PAGES):
            page = state.list_deployments(status=Status.QUEUED, limit=_QUEUE_PAGE, before=before)
            depth += len(page)
            if page:
                oldest = page[-1].created if oldest is None else min(oldest, page[-1].created)
                before = page[-1].id
            if len(page) < _QUEUE_PAGE:
                break
        yield GaugeMetricFamily("pushsite_queue_depth", "Deployments waiting to run (queued).",
                                value=depth)
        yield GaugeMetricFamily("pushsite_queue_oldest_seconds", "Age of the oldest queued "
                                "deployment (0 when none waits).",
                                value=max(0.0, time.time() - oldest) if oldest else 0.0)


def render(service: Running) -> bytes:
    """One scrape's answer body."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(service))
    return generate_latest(registry)
