#!/usr/bin/env bash
# Fair sharing (issue 11) on the simulator, in process: tenant A floods at 5x capacity while
# tenant B sends at 20% of it (B's p99 alone vs under the flood, B's 429s), and a saturating
# priority-1 flood against priority 2 with min_share = 0.1 (priority 2's share of executor
# time), each side by side with today's FIFO (one tenant) and strict priority.
#
#   bench/fairness.sh [--seconds 10] [--json out.json]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/fairness_bench.py "$@"
