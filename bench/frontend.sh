#!/usr/bin/env bash
# Inference front-end ceiling (not a test): /v1/embeddings on a zero-cost simulated executor,
# one and 32 inputs per request, float and base64. Side by side with another tree:
#   git worktree add --detach /tmp/ig-base <commit>
#   TREES="base=/tmp/ig-base,current=." bash bench/frontend.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || make .venv/.installed-$(cksum < pyproject.toml | cut -d' ' -f1) >/dev/null
exec "$PY" bench/frontend_bench.py
