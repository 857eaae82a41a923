#!/usr/bin/env bash
# Chaos benchmark (not a test): normal clients beside abusive ones against `infergate --headless`
# with the default models; see bench/chaos.py for what runs and bench/chaos_clients.py for knobs.
# Usage: bash bench/chaos.sh                 (60 s calm + 60 s chaos)
#        CHAOS_SECONDS=10 bash bench/chaos.sh   (smoke run)
# Writes bench/out/chaos-<time>.json and prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p bench/out
# bench/chaos.py notes every process it starts here; if it dies or is interrupted, the trap
# stops them: SIGTERM, up to 40 s (the server's drain), then SIGKILL. By process id only.
CHAOS_PIDFILE=$(mktemp)
export CHAOS_PIDFILE
cleanup() {
    local pid
    while read -r pid; do
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 200); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
    done < "$CHAOS_PIDFILE"
    rm -f "$CHAOS_PIDFILE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# in the background, so that a signal to this script runs the trap at once (bash defers traps
# while a foreground command runs)
"$PY" bench/chaos.py &
echo $! >> "$CHAOS_PIDFILE"
wait $!
