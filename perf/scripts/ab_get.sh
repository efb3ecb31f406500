#!/bin/bash
# GET A/B between two agentregistry builds on the real corpus, on loopback.
#   BASE=/path/to/old/agentregistry NEW=/path/to/new/agentregistry PERF=target/release/perf \
#   ROUNDS=2 perf/scripts/ab_get.sh
# Starts both servers on fresh homes and free ports, loads each with `perf load` (the real
# corpus), then runs abbreviated, full and tarball GETs (64 connections, 8 s) alternating
# between the two, ROUNDS times; SIGTERM to both servers and deletes the homes at the end.
set -u
PERF=${PERF:-target/release/perf}
declare -A BIN=([base]=${BASE:?set BASE} [new]=${NEW:?set NEW})
declare -A PORT HOME_ PID
for which in base new; do
  home=$(mktemp -d /tmp/ab-get-XXXX); HOME_[$which]=$home
  port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'); PORT[$which]=$port
  "${BIN[$which]}" serve --listen "127.0.0.1:$port" --home "$home/home" > "$home/server.log" 2>&1 &
  PID[$which]=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/-/ping" > /dev/null && break; sleep 0.05; done
  $PERF load --registry "http://127.0.0.1:$port" > /dev/null 2>&1
done
for round in $(seq 1 ${ROUNDS:-3}); do
  for w in abbreviated full tarball; do
    for which in base new; do
      out=$($PERF bench --target "http://127.0.0.1:${PORT[$which]}" --workload $w --connections 64 --seconds 8 --server-pid ${PID[$which]} 2>&1 | grep "^| $w")
      echo "round $round $which: $out"
    done
  done
done
for which in base new; do kill -TERM ${PID[$which]}; wait ${PID[$which]} 2>/dev/null; rm -rf "${HOME_[$which]}"; done
