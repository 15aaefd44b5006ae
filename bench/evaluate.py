"""Forecast-quality evaluation from a checkout: `python bench/evaluate.py --dataset birthdays`.

The same command as `lstmd evaluate` (see `lstmd evaluate --help`); settings come from the
environment and an optional TOML file exactly as for the daemon.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run from a checkout without installing: the repository root holds the daemon package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
