"""Unit tests: the shared fakes and the toy model are importable from every subfolder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
