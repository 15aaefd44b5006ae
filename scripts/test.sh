#!/usr/bin/env bash
# The test command: unit tests (no broker) and integration tests (a real embedded broker).
# Sets up .venv first on a fresh clone. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/lstmd ] || ./scripts/setup.sh
. .venv/bin/activate
exec python -m pytest "$@"
