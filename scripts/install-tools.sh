#!/usr/bin/env bash
# Installs the real package-manager clients the end-to-end suite (server/tests/npm_e2e.rs)
# drives: pnpm, yarn berry and bun, at pinned versions, into <repo>/.tools, with wrappers in
# <repo>/.tools/bin. npm itself is the one on PATH (Node 20 ships it).
#
# Needs only Node >= 18.12 and npm, plus access to the npm registry through npm itself.
# Idempotent: when every pinned version is already installed and runs, it installs nothing.
# Bounded: the install is wrapped in `timeout`, every `--version` probe too.
#
# Usage: scripts/install-tools.sh [--force]
#   AGENTREGISTRY_TOOLS_TIMEOUT_S  install time budget in seconds (default 600)
set -euo pipefail

# Pinned exact versions (checked with `npm view <pkg> version` / `versions`).
# pnpm: the newest 10.x (the suite targets pnpm 9/10 behaviour).
PNPM_VERSION=10.34.9
YARN_VERSION=4.18.1 # npm package @yarnpkg/cli-dist (yarn berry)
BUN_VERSION=1.4.5   # npm package bun; the binary comes from its @oven/bun-<platform> optional dep

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
INSTALL_TIMEOUT_S="${AGENTREGISTRY_TOOLS_TIMEOUT_S:-600}"
PROBE_TIMEOUT_S=60
FORCE=0
if [[ "${1:-}" == "--force" ]]; then FORCE=1; fi

die() { echo "install-tools: $*" >&2; exit 1; }

command -v node >/dev/null || die "node not found on PATH (need Node >= 18.12)"
command -v npm >/dev/null || die "npm not found on PATH"
command -v timeout >/dev/null || die "timeout (coreutils) not found on PATH"

# Prints the version recorded in an installed package's package.json, or nothing.
installed_version() {
  local manifest="$TOOLS/node_modules/$1/package.json"
  [[ -f "$manifest" ]] || return 0
  node -e 'process.stdout.write(String(require(process.argv[1]).version || ""))' "$manifest"
}

# The bun package's postinstall (install.js) replaces bin/bun.exe with the native binary of
# the platform package npm picked. If it could not, bin/bun.exe is a small stub that fails.
bun_binary() {
  local candidate
  for candidate in "$TOOLS/node_modules/bun/bin/bun.exe" \
    "$TOOLS"/node_modules/@oven/bun-*/bin/bun; do
    if [[ -x "$candidate" ]] \
      && timeout "$PROBE_TIMEOUT_S" "$candidate" --version >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

write_wrappers() {
  mkdir -p "$BIN"
  # Wrappers resolve .tools relative to themselves so the directory can move with the repo.
  cat >"$BIN/pnpm" <<'EOF'
#!/bin/sh
here="$(cd "$(dirname "$0")/.." && pwd)"
exec node "$here/node_modules/pnpm/bin/pnpm.cjs" "$@"
EOF
  cat >"$BIN/yarn" <<'EOF'
#!/bin/sh
here="$(cd "$(dirname "$0")/.." && pwd)"
exec node "$here/node_modules/@yarnpkg/cli-dist/bin/yarn.js" "$@"
EOF
  local bun_path
  bun_path="$(bun_binary)" || die "bun binary does not run after install (see above)"
  # Keep the path relative to .tools in the wrapper.
  local bun_rel="${bun_path#"$TOOLS/"}"
  cat >"$BIN/bun" <<EOF
#!/bin/sh
here="\$(cd "\$(dirname "\$0")/.." && pwd)"
exec "\$here/$bun_rel" "\$@"
EOF
  chmod +x "$BIN/pnpm" "$BIN/yarn" "$BIN/bun"
}

all_pinned_present() {
  [[ "$(installed_version pnpm)" == "$PNPM_VERSION" ]] || return 1
  [[ "$(installed_version @yarnpkg/cli-dist)" == "$YARN_VERSION" ]] || return 1
  [[ "$(installed_version bun)" == "$BUN_VERSION" ]] || return 1
  [[ -x "$BIN/pnpm" && -x "$BIN/yarn" && -x "$BIN/bun" ]] || return 1
  bun_binary >/dev/null || return 1
}

if [[ "$FORCE" == 0 ]] && all_pinned_present; then
  echo "install-tools: already installed at the pinned versions in $TOOLS"
else
  echo "install-tools: installing pnpm@$PNPM_VERSION @yarnpkg/cli-dist@$YARN_VERSION" \
    "bun@$BUN_VERSION into $TOOLS (timeout ${INSTALL_TIMEOUT_S}s)"
  mkdir -p "$TOOLS"
  if [[ ! -f "$TOOLS/package.json" ]]; then
    echo '{ "name": "agentregistry-e2e-tools", "private": true }' >"$TOOLS/package.json"
  fi
  # Explicit flags instead of trusting the user's npmrc: optional deps carry bun's binary,
  # and bun's postinstall script links it into place.
  status=0
  timeout "$INSTALL_TIMEOUT_S" npm install --prefix "$TOOLS" --no-audit --no-fund \
    --save-exact --include=optional --ignore-scripts=false \
    "pnpm@$PNPM_VERSION" "@yarnpkg/cli-dist@$YARN_VERSION" "bun@$BUN_VERSION" || status=$?
  if [[ "$status" == 124 ]]; then
    die "npm install timed out after ${INSTALL_TIMEOUT_S}s"
  elif [[ "$status" != 0 ]]; then
    die "npm install failed (exit $status); see npm's messages above"
  fi
  write_wrappers
  all_pinned_present || die "installed versions do not match the pins"
fi

echo "install-tools: tools in $BIN:"
for tool in pnpm yarn bun; do
  version="$(timeout "$PROBE_TIMEOUT_S" "$BIN/$tool" --version 2>&1)" \
    || die "$BIN/$tool --version failed: $version"
  printf '  %-5s %s\n' "$tool" "$version"
done
printf '  %-5s %s (from PATH: %s)\n' npm "$(timeout "$PROBE_TIMEOUT_S" npm --version 2>/dev/null)" \
  "$(command -v npm)"
