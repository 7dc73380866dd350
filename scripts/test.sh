#!/usr/bin/env bash
# The test suite: creates .venv on first use, then runs ruff and pytest. Extra args go to pytest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup_env.sh
.venv/bin/ruff check tapper tests bench
exec .venv/bin/python -m pytest -q "$@"
