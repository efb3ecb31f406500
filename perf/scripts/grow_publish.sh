#!/bin/bash
# Publish storms into packages that grow: one server, RUNS consecutive open-loop runs of
# `perf bench --workload publish --connections 64 --seconds 10 --rate RATE` into the same
# 2,000 packages (namespace "grow"), so run N publishes versions 10(N-1)+1 to 10N.
#   BIN=target/release/agentregistry PERF=target/release/perf RUNS=3 RATE=2000 \
#   perf/scripts/grow_publish.sh
# Prints each run's row and the server CPU seconds it used; SIGTERM to the server's PID at
# the end.
set -u
BIN=${BIN:-target/release/agentregistry}
PERF=${PERF:-target/release/perf}
RUNS=${RUNS:-3}
RATE=${RATE:-2000}
home=$(mktemp -d /tmp/grow-XXXX)
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$BIN" serve --listen "127.0.0.1:$port" --home "$home/home" > "$home/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/-/ping" > /dev/null && break; sleep 0.05; done
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
for run in $(seq 1 "$RUNS"); do
  before=$(cpu)
  out=$("$PERF" bench --target "http://127.0.0.1:$port" --workload publish --connections 64 \
    --seconds 10 --rate "$RATE" --publish-namespace grow --server-pid "$pid" 2>&1)
  after=$(cpu)
  seconds=$(awk -v a="$after" -v b="$before" -v t="$ticks" 'BEGIN { printf "%.2f", (a - b) / t }')
  echo "run $run: $(echo "$out" | grep '^| publish') server CPU $seconds s"
done
kill -TERM "$pid"
wait "$pid" 2> /dev/null
rm -rf "$home"
