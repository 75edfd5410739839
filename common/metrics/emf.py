"""CloudWatch embedded metric format (EMF): a JSON line on stdout that CloudWatch Logs turns into metrics.

One line per flush (once per invocation): namespace ``Koinonia``, dimension set ``[["Stage"]]``, the counts
that changed, the gauges that were set, and every carrier latency sample of the invocation as one histogram
(``{"Values", "Counts", "Min", "Max", "Count", "Sum"}``, the shape AWS's EMF libraries write). CloudWatch takes
at most 100 values per metric in a line, so a flush whose samples spread over more than 100 bins writes the
rest in further lines carrying only ``CarrierLatency``. ``Function`` is a property (not a dimension): Logs
Insights can split by it, CloudWatch metrics are not multiplied by it.

The line is written to stdout directly, not through logging: EMF must be the top-level object, which the JSON
log formatter would wrap. CloudWatch picks EMF out by its ``_aws`` key, which no log line of ours has; the line
is written in one call under a lock, so a log line never lands inside it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from common.metrics.catalog import CATALOG, NAMESPACE, Metric
from common.metrics.registry import Bin, Delta

max_values_per_metric = 100  # CloudWatch's limit on a metric's values in one EMF document
_write_lock = threading.Lock()


def documents(delta: Delta, *, stage: str, function: str, timestamp_ms: int | None = None) -> list[dict[str, Any]]:
    """The EMF documents of one flush (none if nothing changed)."""
    stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    chunks = [delta.latency[i : i + max_values_per_metric] for i in range(0, len(delta.latency), max_values_per_metric)]
    values: dict[Metric, Any] = {**delta.counts, **delta.gauges}
    if chunks:
        values[Metric.carrier_latency] = _histogram(chunks[0])
    out = [_document(values, stage, function, stamp)] if values else []
    out += [_document({Metric.carrier_latency: _histogram(chunk)}, stage, function, stamp) for chunk in chunks[1:]]
    return out


def write(delta: Delta, *, stage: str, function: str) -> int:
    """Write the flush's lines to stdout; how many were written."""
    lines = [json.dumps(doc, separators=(",", ":")) for doc in documents(delta, stage=stage, function=function)]
    if lines:
        with _write_lock:
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()
    return len(lines)


def _document(values: dict[Metric, Any], stage: str, function: str, stamp: int) -> dict[str, Any]:
    directive = {
        "Namespace": NAMESPACE,
        "Dimensions": [["Stage"]],
        "Metrics": [{"Name": str(metric), "Unit": CATALOG[metric].unit} for metric in values],
    }
    doc: dict[str, Any] = {"_aws": {"Timestamp": stamp, "CloudWatchMetrics": [directive]}, "Stage": stage, "Function": function}
    doc.update({str(metric): value for metric, value in values.items()})
    return doc


def _histogram(bins: list[Bin]) -> dict[str, Any]:
    return {
        "Values": [round(b.value_ms, 3) for b in bins],
        "Counts": [b.count for b in bins],
        # The exact statistics of the samples (not of the bins' middles): CloudWatch checks they are possible.
        "Min": min(b.min_ms for b in bins),
        "Max": max(b.max_ms for b in bins),
        "Count": sum(b.count for b in bins),
        "Sum": sum(b.sum_ms for b in bins),
    }
