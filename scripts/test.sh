#!/usr/bin/env bash
# Installs everything (see setup.sh) and runs the default test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the long tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
