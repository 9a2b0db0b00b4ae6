#!/usr/bin/env bash
# Measures a cold build of the control plane (empty Go module cache, Go build cache and
# binary cache, all in a temporary directory) and then a warm one (everything cached).
# Usage: bench/build_time.sh   (takes 10-20 minutes on 2 cores; needs the Go module proxy)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d)
trap 'chmod -R u+w "$TMP" 2>/dev/null; rm -rf "$TMP"' EXIT
export SHAKEOUT_CACHE=$TMP/shakeout GOCACHE=$TMP/gocache GOMODCACHE=$TMP/gomod
start=$(date +%s.%N)
bash "$ROOT/tools/controlplane/build.sh" >/dev/null
cold=$(echo "$(date +%s.%N) - $start" | bc)
start=$(date +%s.%N)
bash "$ROOT/tools/controlplane/build.sh" >/dev/null
warm=$(echo "$(date +%s.%N) - $start" | bc)
printf '| control-plane build | cold (empty module, build and binary caches) | %.0f s |\n' "$cold"
printf '| control-plane build | warm (all cached: version check only) | %.2f s |\n' "$warm"
