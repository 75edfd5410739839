"""The Prometheus text exposition format (version 0.0.4) of the registry and the queue gauges.

Written here rather than with ``prometheus_client``: a dozen series in a fixed shape need ~60 lines, and the
registry must also feed EMF, which that library does not. Every family has its ``# HELP`` and ``# TYPE``;
a counter counted per channel shows every channel (0 until counted), so ``rate()`` has a series from the first
scrape. The gauges come from PostgreSQL at scrape time (``common/metrics/gauges.py``); when it does not answer,
``koinonia_database_up`` is 0 and the three gauges are left out, and the counters are answered as always.
"""

from __future__ import annotations

from common.metrics.catalog import CATALOG, CHANNELS, COUNTERS, LATENCY_BUCKETS_S, Metric
from common.metrics.gauges import Backlog
from common.metrics.registry import Histogram, Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DATABASE_UP = "koinonia_database_up"


def render(snapshot: Snapshot, backlog: Backlog | None) -> str:
    lines: list[str] = []
    for metric in COUNTERS:
        definition = CATALOG[metric]
        _family(lines, definition.prometheus, "counter", definition.help)
        if definition.by_channel:
            for channel in _channels(snapshot, metric):
                total = snapshot.counts.get((metric, channel), 0)
                lines.append(f"{definition.prometheus}{_labels(channel=channel)} {total}")
        else:
            lines.append(f"{definition.prometheus} {sum(n for (m, _c), n in snapshot.counts.items() if m is metric)}")

    latency = CATALOG[Metric.carrier_latency]
    _family(lines, latency.prometheus, "histogram", latency.help)
    for channel in sorted({*CHANNELS, *snapshot.latency}):
        _histogram(lines, latency.prometheus, channel, snapshot.latency.get(channel) or Histogram())

    _family(lines, DATABASE_UP, "gauge", "1: the queue gauges were read from PostgreSQL for this scrape; 0: it did not "
            "answer in time (they are left out)")  # fmt: skip
    lines.append(f"{DATABASE_UP} {0 if backlog is None else 1}")
    if backlog is not None:
        gauges: tuple[tuple[Metric, float], ...] = (
            (Metric.queue_depth, backlog.waiting),
            (Metric.queue_age, backlog.oldest_due_s),
            (Metric.dead_letter_backlog, backlog.dead_letters),
        )
        for metric, value in gauges:
            definition = CATALOG[metric]
            _family(lines, definition.prometheus, "gauge", definition.help)
            lines.append(f"{definition.prometheus} {_number(value)}")
    return "\n".join(lines) + "\n"


def _channels(snapshot: Snapshot, metric: Metric) -> list[str]:
    return sorted({*CHANNELS, *(c for (m, c) in snapshot.counts if m is metric and c)})


def _family(lines: list[str], name: str, kind: str, text: str) -> None:
    lines.append(f"# HELP {name} {_escape_help(text)}")
    lines.append(f"# TYPE {name} {kind}")


def _histogram(lines: list[str], name: str, channel: str, histogram: Histogram) -> None:
    cumulative = 0
    for bound, n in zip((*LATENCY_BUCKETS_S, None), histogram.buckets, strict=True):
        cumulative += n
        le = "+Inf" if bound is None else _number(bound)
        lines.append(f"{name}_bucket{_labels(channel=channel, le=le)} {cumulative}")
    lines.append(f"{name}_sum{_labels(channel=channel)} {_number(histogram.sum_s)}")
    lines.append(f"{name}_count{_labels(channel=channel)} {histogram.count}")


def _labels(**labels: str) -> str:
    inner = ",".join(f'{name}="{_escape_label(value)}"' for name, value in labels.items())
    return "{" + inner + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
