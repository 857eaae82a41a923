#!/usr/bin/env bash
# Real-model benchmark (not a test): MiniLM via infergate (adaptive, off) vs LitServe.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import litserve, matplotlib" 2>/dev/null || "$PY" -m pip install -q -e '.[bench]'
exec "$PY" bench/real_model_bench.py
