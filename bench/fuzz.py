"""The long fuzz run: ``python bench/fuzz.py [--examples 200] [--workers 2] [--write]``.

Runs tests/test_fuzz.py (schemathesis over every operation of every function's own OpenAPI document, as a
real church, the operator, nobody and a made-up key; webhooks signed, unsigned and stale) with
``--examples`` examples per operation and per mode (valid and invalid requests), a fresh random seed, on
real PostgreSQL and Redis: ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` when set, else the machine's
(127.0.0.1:5432 / 6379), else tests/conftest.py starts embedded ones. Every request goes to the functions
in this process (WSGI), nothing leaves the machine. The run is bounded by its example count and by
``--timeout`` (wall clock).

Prints the case count, time, answers by status, and any failure (each one a 5xx, an undocumented status
or error code, an error body of the wrong shape, or an invalid request accepted). ``--write`` puts them in
the ``## Fuzz`` section of bench/RESULTS.md (that section only; the rest of the file is kept byte for byte).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _results import RESULTS, write_section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Fuzz"
MACHINE_DB = "postgresql://postgres@127.0.0.1:5432/postgres"
MACHINE_REDIS = "redis://127.0.0.1:6379/0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="examples per operation and mode (default 200)")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers, one function each (default 2)")
    parser.add_argument("--timeout", type=float, default=3000.0, help="wall-clock limit of the run, seconds")
    parser.add_argument("--write", action="store_true", help="write the ## Fuzz section of bench/RESULTS.md")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env.setdefault("TEST_DATABASE_URL", MACHINE_DB)
    env.setdefault("TEST_REDIS_URL", MACHINE_REDIS)
    with tempfile.TemporaryDirectory(prefix="koinonia-fuzz-") as tmp:
        stats_path = Path(tmp) / "stats.jsonl"
        env.update(KOINONIA_FUZZ_EXAMPLES=str(args.examples), KOINONIA_FUZZ_RANDOM="1", KOINONIA_FUZZ_STATS=str(stats_path))
        command = [
            sys.executable, "-m", "pytest", "tests/test_fuzz.py", "-q", "-p", "no:cacheprovider",
            "-n", str(args.workers), "-o", f"timeout={int(args.timeout)}", "--tb=short", "--show-capture=no",
        ]  # fmt: skip
        print(f"fuzz: {args.examples} examples per operation and mode, {args.workers} workers ...", flush=True)
        started = time.perf_counter()
        try:
            run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout + 60)
            output, code = run.stdout + run.stderr, run.returncode
        except subprocess.TimeoutExpired as exc:
            output, code = f"{exc.stdout or ''}{exc.stderr or ''}\n(timed out after {args.timeout:.0f} s)", -1
        seconds = time.perf_counter() - started
        lines = [json.loads(line) for line in stats_path.read_text().splitlines()] if stats_path.exists() else []

    findings = _findings(output) if code != 0 else []
    summary = _summarise(lines, seconds, args.examples, args.workers, findings, code)
    print(summary)
    if code != 0:
        print(output[-6000:])
    if args.write:
        write_section(SECTION, summary)
        print(f"wrote the {SECTION} section of {RESULTS.relative_to(ROOT)}")
    return 0 if code == 0 else 1


def _findings(output: str) -> list[str]:
    failed = [m.group(1) for m in re.finditer(r"^FAILED (\S+)", output, re.MULTILINE)]
    # pytest's "E " lines and schemathesis' grouped report ("  |     Invalid component: ...", "  |     curl ...")
    text = [line.removeprefix("E ").strip().lstrip("|+- ").strip() for line in output.splitlines()]
    errors = [line for line in text if re.match(r"(\w+Error|\w+Data|Invalid component|Expected|undocumented|not JSON)", line)]
    errors = list(dict.fromkeys(errors))
    curls = list(dict.fromkeys(line for line in text if line.startswith("curl ")))
    out = [f"failed: {name}" for name in failed]
    out += [f"error: {line[:200]}" for line in errors[:10]]
    out += [f"reproduce: {line[:300]}" for line in curls[:5]]
    return out or ["the run failed before any case (see the output above)"]


def _summarise(lines: list[dict], seconds: float, examples: int, workers: int, findings: list[str], code: int) -> str:
    statuses: Counter[str] = Counter()
    for line in lines:
        statuses.update(line["statuses"])
    cases = sum(line["cases"] for line in lines)
    operations = sum(line["operations"] for line in lines)
    rows = "\n".join(
        f"| {line['function']} | {line['operations']} | {line['cases']:,} | {line['seconds']:.1f} | "
        + ", ".join(f"{k}: {v:,}" for k, v in sorted(line["statuses"].items()))
        + " |"
        for line in sorted(lines, key=lambda x: x["function"])
    )
    answers = ", ".join(f"{k}: {v:,}" for k, v in sorted(statuses.items()))
    verdict = (
        "No findings: no 5xx, every answer JSON with a documented status, every error in the documented shape with "
        "a documented code, every invalid request refused."
        if code == 0
        else "Findings:\n\n" + "\n".join(f"- `{f}`" for f in findings)
    )
    return f"""{SECTION}

`python bench/fuzz.py --examples {examples} --write` ({dt.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores,
{workers} workers, random seed): schemathesis over every operation of the six functions' own OpenAPI documents
(`GET /openapi.json`), {examples} valid and {examples} invalid examples per operation at most (fewer where an
operation has little to vary), sent as a real church, the operator, no key and a made-up key (webhooks: signed,
unsigned, stale), on real PostgreSQL and Redis. CI runs the same file bounded (`KOINONIA_FUZZ_EXAMPLES`, default 20,
derandomised).

**{cases:,} cases over {operations} operations in {seconds:.0f} s**; answers: {answers}.

| function | operations | cases | s | answers |
| --- | --- | --- | --- | --- |
{rows}

{verdict}

What the fuzzing found, each fixed where it was (a regression test for each is in tests/test_hostile_input.py):

- 500 on `GET /messages?cursor=%C2%80` (and `/conversations`): base64 of a non-ASCII cursor raises `ValueError`, which
  `common/messages/read_api.py` did not catch; now 400 `invalid_cursor`.
- 500 on `GET /dead-letters?error_code=%00`: NUL reached PostgreSQL; `common/dead_letters/api.py` now refuses control
  characters and codes over 64 characters (400 `invalid_parameter`; the body filter likewise, 422).
- 500 on a *signed* webhook with `\\u0000` in a string (Telnyx would redeliver it forever): `common/webhooks/handler.py`
  now reads bodies with the same strict reader as every body (`common.web.parse_json`): 422 `invalid_string`.
- HTML 404s from Flask itself (a path with a line break matches no rule; functions-framework's `/favicon.ico`,
  `/robots.txt`): `common.web.json_http_errors()`, called by each function, answers them in the JSON error shape.
- 500 on `telnyx-timestamp: ²` (before any signature check) and on `limit=²` (`/messages`, `/dead-letters`): `"²"` is
  `isdigit()` but `int("²")` raises; `common/webhooks/signature.py`, `common/messages/read_api.py` and
  `common/dead_letters/api.py` now take ASCII digits only (401 `timestamp_invalid`, 400 `invalid_limit`). Found by
  reading the code the fuzzer pointed at, not by a generated case.
- 500 on signed receipts whose `webhook_url` carries a made-up `mid` of the right shape, or whose `cost.amount` is
  not a number or overflows `numeric(12, 5)` (`common/webhooks/events.py`: the id is now parsed as a UUID, the cost
  dropped when unusable; the receipt is kept). Found by probing receipts by hand: random envelopes rarely reach them.
- Invalid bodies accepted on dlq-drain: `POST /dead-letters/archive` took a JSON `null` as "no body", and the
  scheduler's `POST /events` took any bytes; both now take no body or a JSON object (else 400/422).

And before the fuzzer ran, by construction (tests/test_hostile_input.py): bodies nested thousands deep were a 500
(`RecursionError` in `json.loads`; now 400 `json_too_deep`, counted on the bytes before parsing), so were integers past
4,300 digits (now 400 `invalid_json`) and `\\u0000` in a text (PostgreSQL refuses it; now 422 `invalid_string`);
`NaN`, `1e999`, UTF-16 bodies and duplicate keys were accepted (now 400); numbers with control characters inside
(`"312555\\x000142"`) were accepted with the characters dropped, and `media_urls` with line breaks had them silently
removed by the URL parser (now 422).
"""


if __name__ == "__main__":
    raise SystemExit(main())
