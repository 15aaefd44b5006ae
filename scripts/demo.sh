#!/usr/bin/env bash
# Set up (first time only) and run the demo: `./scripts/demo.sh --events 50000`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/lstmd ] || ./scripts/setup.sh
exec .venv/bin/lstmd demo "$@"
