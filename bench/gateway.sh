#!/usr/bin/env bash
# Gateway-mode benchmarks (issue 9; not a test): merging, pass-through cost (vs nginx and
# LiteLLM's proxy), streaming TTFT and inter-token gaps. Installs wrk and nginx if missing;
# LiteLLM goes into its own venv (its pins clash with ours) unless LITELLM names a `litellm`.
# Usage: bash bench/gateway.sh     (DURATION, PARTS=merge,pass,stream: see bench/gateway_bench.py)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null
fi
PY=${PY:-.venv/bin/python}
LITELLM_VENV=${LITELLM_VENV:-/tmp/litellm-venv}
if [ -z "${LITELLM:-}" ] && [ "${NO_LITELLM:-0}" != 1 ]; then
    if [ ! -x "$LITELLM_VENV/bin/litellm" ]; then
        python3 -m venv "$LITELLM_VENV"
        "$LITELLM_VENV/bin/pip" install -q 'litellm[proxy]'
    fi
    export LITELLM="$LITELLM_VENV/bin/litellm"
fi
exec "$PY" bench/gateway_bench.py
