#!/bin/bash
# Packument GETs from one server with --cores 2 and one with --cores 1, alternating, on loopback.
#   BIN=target/release/agentregistry PERF=target/release/perf ROUNDS=3 WORKLOAD=abbreviated \
#   perf/scripts/cores_ab.sh
# Each run: a fresh home and free port, the real corpus loaded through the publish path, 3 s of
# warm-up, then `perf bench --connections 64 --seconds 10`, then SIGTERM to the server's PID.
# (ARCHITECTURE.md, "Half the CPUs are cores".)
set -u
BIN=${BIN:-target/release/agentregistry}
PERF=${PERF:-target/release/perf}
ROUNDS=${ROUNDS:-3}
WORKLOAD=${WORKLOAD:-abbreviated}
homes=()
for round in $(seq 1 "$ROUNDS"); do
  for cores in 2 1; do
    home=$(mktemp -d /tmp/ab-cores-XXXX)
    homes+=("$home")
    port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    "$BIN" serve --cores "$cores" --listen "127.0.0.1:$port" --home "$home/home" > "$home/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/-/ping" > /dev/null && break; sleep 0.05; done
    "$PERF" load --registry "http://127.0.0.1:$port" > /dev/null 2>&1
    "$PERF" bench --target "http://127.0.0.1:$port" --workload "$WORKLOAD" --connections 64 \
      --seconds 3 > /dev/null 2>&1
    out=$("$PERF" bench --target "http://127.0.0.1:$port" --workload "$WORKLOAD" --connections 64 \
      --seconds 10 --server-pid "$pid" 2>&1)
    echo "round $round --cores $cores: $(echo "$out" | grep "^| $WORKLOAD")"
    kill -TERM "$pid"
    wait "$pid" 2> /dev/null
  done
done
rm -rf "${homes[@]}"
