#!/bin/bash
# A/B publish storm between two agentregistry builds, alternating, on loopback.
#   BASE=/path/to/old/agentregistry NEW=/path/to/new/agentregistry PERF=target/release/perf \
#   ROUNDS=3 perf/scripts/ab_publish.sh
# Each run: a fresh home and free port, `perf bench --workload publish --connections 64
# --seconds 10`, then SIGTERM to the server's PID. Homes are deleted only after the last round:
# ext4 without a journal skips recently freed inodes when allocating, so deleting a home right
# before the next run slows that run's blob creation.
set -u
PERF=${PERF:-target/release/perf}
ROUNDS=${ROUNDS:-3}
declare -A BIN=([base]=${BASE:?set BASE} [new]=${NEW:?set NEW})
homes=()
for round in $(seq 1 "$ROUNDS"); do
  for which in base new; do
    home=$(mktemp -d /tmp/ab-pub-XXXX)
    homes+=("$home")
    port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    "${BIN[$which]}" serve --listen "127.0.0.1:$port" --home "$home/home" > "$home/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/-/ping" > /dev/null && break; sleep 0.05; done
    out=$("$PERF" bench --target "http://127.0.0.1:$port" --workload publish --connections 64 \
      --seconds 10 --server-pid "$pid" 2>&1)
    echo "round $round $which: $(echo "$out" | grep '^| publish')"
    kill -TERM "$pid"
    wait "$pid" 2> /dev/null
  done
done
rm -rf "${homes[@]}"
