#!/usr/bin/env bash
# Token-budget batching (issue 10, not a test): MiniLM on ONNX Runtime, 80% short queries / 20%
# long passages, item-count (max_batch_size = 32) vs token-budget (max_batch_tokens = 8192)
# batching: open-loop rate sweep to saturation, then short-query p50/p99 at 50/70/90% of
# item-count's saturation. ~7-8 minutes.
# Writes docs/token_budget.png and prints markdown tables.
#   SWEEP_S=15 LOADS=0.5,0.7,0.9 POINT_S=20,70,20 bash bench/token_budget.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import matplotlib" 2>/dev/null || "$PY" -m pip install -q -e '.[bench]'
exec "$PY" bench/token_budget_bench.py
