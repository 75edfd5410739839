"""Where the benchmarks write their figures: one ``## ...`` section of bench/RESULTS.md each, and their keys
of bench/results.json. Every other section and key is kept as it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
RESULTS_JSON = BENCH / "results.json"


def write_section(heading: str, section: str) -> None:
    """Replace the section that starts with the line ``heading`` (up to the next ``## ``), or append it."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = section.rstrip("\n") + "\n"
    if text.startswith(heading + "\n"):
        start = 0
    else:
        start = text.find("\n" + heading + "\n")
        start = start + 1 if start >= 0 else -1
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(heading))
        rest = text[nxt + 1 :] if nxt >= 0 else ""
        text = text[:start] + section + ("\n" + rest if rest else "")
    RESULTS.write_text(text)


def update_json(values: dict[str, Any]) -> None:
    """Set these top-level keys of results.json; the other benchmarks' keys stay as they were."""
    data = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    data.update(values)
    RESULTS_JSON.write_text(json.dumps(data, indent=2) + "\n")
