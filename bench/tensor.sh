#!/usr/bin/env bash
# Any-ONNX-model benchmark (not a test): a 3.9M-parameter MLP from a model repository,
# infergate (adaptive, off) vs MLServer 1.7 (custom ONNX Runtime runtime, adaptive batching),
# and the in-process ceiling. See bench/tensor_bench.py.
#
# MLServer goes into its own virtualenv (MLSERVER_VENV): it pins fastapi and protobuf and pulls
# grpcio, pandas and OpenTelemetry (~400 MB), which must not change the versions the project's
# tests run with. Set MLSERVER_VENV="" to benchmark infergate and the ceiling only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MLSERVER_VENV=${MLSERVER_VENV-${XDG_CACHE_HOME:-$HOME/.cache}/infergate/mlserver-venv}
"$PY" -c "import onnx, uvloop" 2>/dev/null || "$PY" -m pip install -q -e '.[dev,bench]'
MLSERVER_PY=""
if [ -n "$MLSERVER_VENV" ]; then
  if [ ! -x "$MLSERVER_VENV/bin/mlserver" ]; then
    "$PY" -m venv "$MLSERVER_VENV"
    "$MLSERVER_VENV/bin/pip" install -q "mlserver==1.7.1" "onnxruntime>=1.17" || {
      echo "MLServer could not be installed into $MLSERVER_VENV; running without it" >&2
    }
  fi
  [ -x "$MLSERVER_VENV/bin/mlserver" ] && MLSERVER_PY="$MLSERVER_VENV/bin/python"
fi
exec "$PY" bench/tensor_bench.py $MLSERVER_PY
