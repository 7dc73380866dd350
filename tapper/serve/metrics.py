"""Counters and histograms rendered in the Prometheus text exposition format (no client library needed)."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

LabelValues = tuple[str, ...]


def _labels(names: tuple[str, ...], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self._values: dict[LabelValues, float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            for labels, v in sorted(self._values.items()):
                lines.append(f"{self.name}{_labels(self.label_names, labels)} {_num(v)}")
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self.buckets = tuple(sorted(buckets))
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}  # counts per bucket, [sum]
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            counts, total = self._series.setdefault(labels, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            total[0] += value

    def count(self, *labels: str) -> int:
        series = self._series.get(labels)
        return 0 if series is None else sum(series[0])

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for labels, (counts, total) in sorted(self._series.items()):
                running = 0
                for bound, c in zip((*self.buckets, float("inf")), counts, strict=True):
                    running += c
                    le = "+Inf" if bound == float("inf") else _num(bound)
                    bucket_labels = _labels(self.label_names, labels, 'le="' + le + '"')
                    lines.append(f"{self.name}_bucket{bucket_labels} {running}")
                lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_num(total[0])}")
                lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {running}")
        return lines


class Gauge:
    """A value read at scrape time (queue depth, user count): nothing to keep in sync. A private gauge
    (a figure across all tenants) is rendered only for a scraper that presented the metrics key."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float], private: bool = False) -> None:
        self.name, self.help, self.read, self.private = name, help_text, read, private

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {_num(self.read())}"]


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    def __init__(self, max_batch: int) -> None:
        self.requests = Counter("tapper_requests_total", "HTTP requests by route and status", ("route", "status"))
        self.latency = Histogram(
            "tapper_request_seconds", "HTTP request latency by route", LATENCY_BUCKETS, ("route",)
        )
        sizes = tuple(sorted({1, 2, 4, 8, 16, 32, 64, max_batch}))
        self.batch_size = Histogram("tapper_batch_size", "requests per engine forward pass", sizes)
        self.engine_seconds = Histogram(
            "tapper_engine_seconds", "engine time per batch (generate call)", LATENCY_BUCKETS
        )
        self.rejected = Counter("tapper_rejected_total", "requests refused with 503 (queue full)", ("queue",))
        self.jobs = Counter("tapper_jobs_total", "refresh jobs by final status", ("status",))
        self.gauges: list[Gauge] = []

    def add_gauge(self, name: str, help_text: str, read: Callable[[], float], private: bool = False) -> None:
        self.gauges.append(Gauge(name, help_text, read, private))

    def render(self, include_private: bool = False) -> str:
        lines: list[str] = []
        metrics = (self.requests, self.latency, self.batch_size, self.engine_seconds, self.rejected, self.jobs)
        gauges = [g for g in self.gauges if include_private or not g.private]
        for metric in (*metrics, *gauges):
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
