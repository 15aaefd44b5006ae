#!/usr/bin/env bash
# The test command: unit tests (no broker), integration tests (a real embedded broker) and deploy
# tests. Installs the Debian test tools first (as root; otherwise prints the apt-get line) and
# sets up .venv on a fresh clone. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/system-deps.sh
[ -x .venv/bin/lstmd ] || ./scripts/setup.sh
. .venv/bin/activate
exec python -m pytest "$@"
