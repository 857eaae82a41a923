#!/usr/bin/env bash
# Side-by-side HTTP benchmark (not a test). Installs wrk, nginx and uvicorn if missing.
# Usage: bash bench/http.sh            (DURATION, ROUNDS, CONNS, SCENARIOS: see bench/http_bench.py)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null
fi
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || make .venv/.installed-$(cksum < pyproject.toml | cut -d' ' -f1) >/dev/null
"$PY" -c "import uvicorn" 2>/dev/null || "$PY" -m pip install -q -e '.[bench]'
exec "$PY" bench/http_bench.py
