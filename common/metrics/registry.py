"""The process's one registry of counts, latencies and gauges, read two ways.

Prometheus (``GET /metrics``) reads totals since the process started; CloudWatch EMF (``flush``) takes what
changed since its last flush. So the registry keeps totals, and a copy of the totals the last EMF flush
reported: a flush's counts are the difference, and recording never does more than its one update.

Thread-safe (functions-framework serves requests on threads; the consumer's outcome writes run in worker
threads): one lock, held for a dict update. Latencies are kept twice, as cheaply: a fixed-bucket histogram
per channel (Prometheus) and, until the next flush, log-spaced bins (EMF's ``Values``/``Counts``).
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass, field

from common.metrics.catalog import GAUGES, LATENCY_BUCKETS_S, Metric

# EMF latency bins are 10% wide (as AWS's own EMF libraries bin histograms): a bin's value is its geometric
# middle, within 5% of every sample in it, which is about the precision CloudWatch keeps values at anyway.
_BIN_WIDTH = math.log(1.1)
_SMALLEST_MS = 0.001  # a clock that did not move: counted in the lowest bin


@dataclass
class Histogram:
    """Prometheus' view of one channel's latencies: a count per bucket (the last is +Inf), their sum and count."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    sum_s: float = 0.0
    count: int = 0


@dataclass
class Bin:
    """EMF's view: the samples (milliseconds) that fell into one 10% bin since the last flush."""

    value_ms: float  # the bin's middle: what EMF reports for each of them
    count: int = 0
    sum_ms: float = 0.0
    min_ms: float = math.inf
    max_ms: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    """Totals since the process started (Prometheus)."""

    counts: dict[tuple[Metric, str], int]  # (metric, channel or "") -> total
    latency: dict[str, Histogram]  # channel -> histogram


@dataclass(frozen=True)
class Delta:
    """What changed since the last EMF flush: counts summed over channels (EMF's one dimension is Stage),
    gauges set meanwhile, latency bins in increasing order."""

    counts: dict[Metric, int]
    gauges: dict[Metric, float]
    latency: list[Bin]

    def __bool__(self) -> bool:
        return bool(self.counts or self.gauges or self.latency)


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[Metric, str], int] = {}
        self._reported: dict[tuple[Metric, str], int] = {}  # the totals the last EMF flush reported
        self._latency: dict[str, Histogram] = {}
        self._bins: dict[int, Bin] = {}
        self._gauges: dict[Metric, float] = {}

    def count(self, metric: Metric, n: int = 1, channel: str = "") -> None:
        """Add ``n`` (a batch's worth: call once per batch, not per message) to a counter."""
        if n <= 0:
            return
        key = (metric, channel)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def observe_latency(self, seconds: float, channel: str) -> None:
        """One carrier request took ``seconds``."""
        seconds = max(seconds, 0.0)
        ms = max(seconds * 1000.0, _SMALLEST_MS)
        index = math.floor(math.log(ms) / _BIN_WIDTH)
        bucket = bisect.bisect_left(LATENCY_BUCKETS_S, seconds)  # le is inclusive: the first bound >= seconds
        with self._lock:
            histogram = self._latency.get(channel)
            if histogram is None:
                histogram = self._latency[channel] = Histogram()
            histogram.buckets[bucket] += 1
            histogram.sum_s += seconds
            histogram.count += 1
            sample = self._bins.get(index)
            if sample is None:
                sample = self._bins[index] = Bin(math.exp((index + 0.5) * _BIN_WIDTH))
            sample.count += 1
            sample.sum_ms += ms
            sample.min_ms = min(sample.min_ms, ms)
            sample.max_ms = max(sample.max_ms, ms)

    def set_gauge(self, metric: Metric, value: float) -> None:
        """A gauge's current value, reported by the next EMF flush (Prometheus reads gauges at scrape time)."""
        if metric not in GAUGES:
            raise ValueError(f"{metric} is not a gauge")
        with self._lock:
            self._gauges[metric] = value

    def snapshot(self) -> Snapshot:
        with self._lock:
            latency = {channel: Histogram(list(h.buckets), h.sum_s, h.count) for channel, h in self._latency.items()}
            return Snapshot(dict(self._counts), latency)

    def take_delta(self) -> Delta:
        """What changed since the last call, and mark it reported."""
        with self._lock:
            counts: dict[Metric, int] = {}
            for key, total in self._counts.items():
                change = total - self._reported.get(key, 0)
                if change:
                    counts[key[0]] = counts.get(key[0], 0) + change
            self._reported = dict(self._counts)
            bins, self._bins = self._bins, {}
            gauges, self._gauges = self._gauges, {}
        return Delta(counts, gauges, [bins[i] for i in sorted(bins)])


REGISTRY = Registry()
