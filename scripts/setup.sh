#!/usr/bin/env bash
# Create .venv and install lstmd with its demo data set and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e '.[dev,eval]'
echo "lstmd $(lstmd --version | cut -d' ' -f2) installed in .venv (activate: . .venv/bin/activate)"
