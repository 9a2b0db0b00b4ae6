#!/usr/bin/env bash
# Measures a cold build of the control plane (empty Go module cache, Go build cache and
# binary cache, all in a temporary directory) and then a warm one (everything cached).
# Usage: bench/build_time.sh   (takes 10-20 minutes on 2 cores; needs the Go module proxy)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d)
trap 'chmod -R u+w "$TMP" 2>/dev/null; rm -rf "$TMP"' EXIT
export SHAKEOUT_CACHE=$TMP/shakeout GOCACHE=$TMP/gocache GOMODCACHE=$TMP/gomod
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$EPOCHREALTIME"; }
start=$EPOCHREALTIME
bash "$ROOT/tools/controlplane/build.sh" >/dev/null
cold=$(elapsed "$start")
start=$EPOCHREALTIME
bash "$ROOT/tools/controlplane/build.sh" >/dev/null
warm=$(elapsed "$start")
echo "| control-plane build, cold (empty Go module, Go build and binary caches) | ${cold} s |"
echo "| control-plane build, warm (all cached: only the version check runs) | ${warm} s |"
