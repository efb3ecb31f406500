#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this). On a fresh machine with
# Rust, Node 20 + npm and Python it installs what the tests need (pnpm, yarn berry and bun,
# through npm, into .tools/, bounded in time), then runs every Rust test: unit and property
# tests, engine integration tests, HTTP tests against the real binary on loopback, and the
# real-client end-to-end tests (npm, pnpm, yarn, bun).
#
# Long soaks and fuzzing are not part of this command: see fuzz/README.md and perf/README.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

echo "== installing test tools (pnpm, yarn berry, bun) =="
timeout 900 bash scripts/install-tools.sh

echo "== cargo test --workspace =="
# Two test threads: the machine has two cores, and the end-to-end tests run real clients.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked -- --test-threads=2 2>&1 | tee "$log" || status=$?

# cargo prints one "test result:" line per test binary (the last is usually the doc-tests'
# "0 passed"); close with the totals so the whole run is summarized in one line.
awk '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i + 1) ~ /^passed;?$/) passed += $i
         if ($(i + 1) ~ /^failed;?$/) failed += $i
       }
     }
     END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
