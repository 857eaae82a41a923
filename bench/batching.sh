#!/usr/bin/env bash
# Dynamic batching benchmark (not a test): off vs window vs adaptive on the simulated executor.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import matplotlib" 2>/dev/null || "$PY" -m pip install -q -e '.[bench]'
exec "$PY" bench/batching_bench.py
