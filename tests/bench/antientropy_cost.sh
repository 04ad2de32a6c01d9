#!/bin/bash
# Anti-entropy's cost on foreground throughput (issue "Anti-entropy"): YCSB-A on two
# 3-node clusters started for the run, one exchanging every partition every 5 s, one with
# anti-entropy off, measured in turns (the idle cluster paused with SIGSTOP), 3 rounds.
# Usage: tests/bench/antientropy_cost.sh [BASE_PORT]   (prints one line per run)
set -euo pipefail
cd "$(dirname "$0")/../.."
D=.venv/bin/dynctl
BASE=${1:-61070}
WORK=$(mktemp -d)
trap 'for f in "$WORK"/*/pids; do kill $(cat "$f") 2>/dev/null || true; done; sleep 2; rm -rf "$WORK"' EXIT
printf '[antientropy]\nperiod = 5.0\n' > "$WORK/on.toml"
printf '[antientropy]\nenabled = false\n' > "$WORK/off.toml"

start() {  # NAME FIRST_PORT
  local name=$1 port=$2
  mkdir -p "$WORK/$name"
  for i in 1 2 3; do
    setsid .venv/bin/python -m dynd -c "$WORK/$name.toml" --node-id "n$i" \
      --listen "127.0.0.1:$((port + i - 1))" --data-dir "$WORK/$name/n$i" \
      > "$WORK/$name/n$i.log" 2>&1 &
    echo $! >> "$WORK/$name/pids"
  done
  sleep 3
  $D --node "127.0.0.1:$((port + 1))" cluster join "127.0.0.1:$port" > /dev/null
  $D --node "127.0.0.1:$((port + 2))" cluster join "127.0.0.1:$port" > /dev/null
  $D --node "127.0.0.1:$port" cluster commit > /dev/null
  $D --node "127.0.0.1:$port" cluster wait --timeout 60 > /dev/null
  $D --node "127.0.0.1:$port" bench -w load --records 10000 -c 32 > /dev/null
}

start on "$BASE"
start off "$((BASE + 1000))"
for round in 1 2 3; do
  for name in on off; do
    other=$([ "$name" = on ] && echo off || echo on)
    port=$([ "$name" = on ] && echo "$BASE" || echo "$((BASE + 1000))")
    kill -STOP $(cat "$WORK/$other/pids"); kill -CONT $(cat "$WORK/$name/pids"); sleep 1
    $D --node "127.0.0.1:$port" --json bench -w a --records 10000 --no-load --duration 8 \
        --warmup 2 -c 32 | .venv/bin/python -c "import json, sys
phase = json.load(sys.stdin)['phases'][-1]
print(f\"round=$round antientropy=$name ops/s={phase['throughput']} \"
      f\"update_p99_ms={phase['operations'].get('update', {}).get('p99')}\")"
  done
done
kill -CONT $(cat "$WORK/on/pids") $(cat "$WORK/off/pids")
