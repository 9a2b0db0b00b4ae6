#!/usr/bin/env bash
# Builds and installs the peer tools `make bench-peers` runs against (bench/peers.py), into a
# cache outside the checkout keyed by version, like tools/controlplane/build.sh:
#   - Chaos Mesh's chaos-controller-manager, from its Go module (chaos-mesh/go.mod), with its
#     CRDs (manifests/crd.yaml of the same module) beside the binary;
#   - Chaos Toolkit and chaostoolkit-kubernetes from PyPI, in a venv of their own.
# Each is rebuilt only when its version (or Go, or Python) changes.
#
#   tools/peers/build.sh           build what is missing, print where it lives
#   tools/peers/build.sh --print   only print where it lives
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE=${SHAKEOUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shakeout}
PYTHON=${PYTHON:-python3}
CM_DIR=$CACHE/bin/chaos-mesh-$CHAOS_MESH_VERSION
CTK_DIR=$CACHE/peers/ctk-$CHAOSTOOLKIT_VERSION-k8s-$CHAOSTOOLKIT_KUBERNETES_VERSION

print_dirs() { printf 'CHAOS_MESH_BIN=%s\nCTK_VENV=%s\n' "$CM_DIR" "$CTK_DIR"; }
if [[ "${1:-}" == "--print" ]]; then print_dirs; exit 0; fi

log() { printf '[peers %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
with_progress() {
  local what=$1; shift
  local start=$SECONDS rc=0
  ( while sleep 30; do log "$what: still building ($((SECONDS - start))s)"; done ) &
  local ticker=$!
  "$@" || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  if (( rc != 0 )); then log "$what: FAILED (exit $rc)"; return $rc; fi
  log "$what: done in $((SECONDS - start))s"
}
fresh() { [[ -f "$1/.stamp" && "$(cat "$1/.stamp")" == "$2" ]]; }

build_chaos_mesh() {
  cd "$HERE/chaos-mesh"
  # The proxy's checksum database does not answer for some chaos-mesh modules (a 404 on
  # github.com/chaos-mesh/fx-logr); chaos-mesh/go.sum, committed, holds their hashes.
  export CGO_ENABLED=0 GOFLAGS=-mod=mod GONOSUMDB=github.com/chaos-mesh
  local pinned
  pinned=$(go list -m -f '{{.Version}}' github.com/chaos-mesh/chaos-mesh)
  if [[ "$pinned" != "$CHAOS_MESH_VERSION" ]]; then
    log "chaos-mesh: versions.env says $CHAOS_MESH_VERSION but chaos-mesh/go.mod has $pinned"
    return 1
  fi
  mkdir -p "$CM_DIR.tmp"
  go build -trimpath -ldflags "-s -w" -o "$CM_DIR.tmp/chaos-controller-manager" \
    github.com/chaos-mesh/chaos-mesh/cmd/chaos-controller-manager
  cp "$(go list -m -f '{{.Dir}}' github.com/chaos-mesh/chaos-mesh)/manifests/crd.yaml" \
    "$CM_DIR.tmp/crd.yaml"
  chmod u+w "$CM_DIR.tmp/crd.yaml"
}

# A venv's scripts name its path: it is made where it stays (not moved into place like the
# binaries), and stamped when complete.
install_ctk() {
  "$PYTHON" -m venv "$CTK_DIR"
  "$CTK_DIR/bin/pip" install --quiet --upgrade pip
  "$CTK_DIR/bin/pip" install --quiet "chaostoolkit==$CHAOSTOOLKIT_VERSION" \
    "chaostoolkit-kubernetes==$CHAOSTOOLKIT_KUBERNETES_VERSION"
}

ctk() {
  local stamp="$CHAOSTOOLKIT_VERSION $CHAOSTOOLKIT_KUBERNETES_VERSION $("$PYTHON" -V)"
  if fresh "$CTK_DIR" "$stamp"; then log "chaostoolkit: cached in $CTK_DIR"; return; fi
  log "chaostoolkit $CHAOSTOOLKIT_VERSION: installing from PyPI"
  rm -rf "$CTK_DIR"
  with_progress "chaostoolkit" install_ctk
  echo "$stamp" > "$CTK_DIR/.stamp"
}

component() {
  local name=$1 dir=$2 stamp=$3 fn=$4
  if fresh "$dir" "$stamp"; then log "$name: cached in $dir"; return; fi
  log "$name: building (a cold Chaos Mesh build takes about 15 minutes on 2 cores)"
  rm -rf "$dir.tmp"
  with_progress "$name" "$fn"
  echo "$stamp" > "$dir.tmp/.stamp"
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
}

mkdir -p "$CACHE/bin" "$CACHE/peers"
ctk
component "chaos-mesh $CHAOS_MESH_VERSION" "$CM_DIR" "$CHAOS_MESH_VERSION $(go env GOVERSION)" \
  build_chaos_mesh
print_dirs
