"""``python -m bench.peers [--quick]`` (from the repository root), or ``python bench/peers [--quick]``."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a directory: make ``bench.peers`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.peers import main

if __name__ == "__main__":
    raise SystemExit(main())
