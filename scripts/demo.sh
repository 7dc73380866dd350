#!/usr/bin/env bash
# The main job on the embedded defaults: bundled SmolLM2-135M backbone, built-in sample data, SQLite store.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup_env.sh
exec .venv/bin/tapper demo "$@"
