#!/usr/bin/env bash
# TLS cost benchmark (not a test): plain HTTP vs HTTPS on the same infergate, tiny and
# embeddings routes, keep-alive and a new connection per request. Installs wrk if missing.
# Usage: bash bench/tls.sh        (DURATION, ROUNDS, CONNS, SCENARIOS: see bench/tls_bench.py)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v openssl >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk openssl >/dev/null
fi
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || make .venv/.installed-$(cksum < pyproject.toml | cut -d' ' -f1) >/dev/null
exec "$PY" bench/tls_bench.py
