#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok) and the kstatus checker (kstatus/main.go, on
# sigs.k8s.io/cli-utils) from Go modules, into a cache outside the checkout keyed by
# version. A component is rebuilt only when its version (or Go) changes; kstatus and
# pause also when their sources change.
#
# With --real-node, also what `shakeout sandbox up --real-node` runs: kubelet and
# kube-proxy (the same k8s module and version as the control plane), the NetworkPolicy
# engine sigs.k8s.io/kube-network-policies (netpol/), and our pause program (pause/).
#
# With --prometheus, also Prometheus (prometheus/, github.com/prometheus/prometheus), which
# `shakeout sandbox up --prometheus` runs for the metric checks (docs/sandbox.md).
#
#   tools/controlplane/build.sh [--real-node] [--prometheus]   build what is missing, print the bin dirs
#   tools/controlplane/build.sh --print         only print where the binaries live
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE=${SHAKEOUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shakeout}
BIN=$CACHE/bin
GOVER=$(go env GOVERSION)
export CGO_ENABLED=0 GOFLAGS=-mod=mod

K8S_DIR=$BIN/k8s-$K8S_VERSION
ETCD_DIR=$BIN/etcd-$ETCD_VERSION
KWOK_DIR=$BIN/kwok-$KWOK_VERSION
KSTATUS_DIR=$BIN/kstatus-$KSTATUS_CLI_UTILS
NODE_DIR=$BIN/k8s-node-$K8S_VERSION
NETPOL_DIR=$BIN/kube-network-policies-$NETPOL_VERSION
PAUSE_SRC=$(cat "$HERE"/pause/{main.go,go.mod} | sha256sum | cut -c1-12)
PAUSE_DIR=$BIN/pause-$PAUSE_SRC
PROMETHEUS_DIR=$BIN/prometheus-$PROMETHEUS_VERSION

print_dirs() {
  printf 'K8S_BIN=%s\nETCD_BIN=%s\nKWOK_BIN=%s\nKSTATUS_BIN=%s\n' \
    "$K8S_DIR" "$ETCD_DIR" "$KWOK_DIR" "$KSTATUS_DIR"
  printf 'NODE_BIN=%s\nNETPOL_BIN=%s\nPAUSE_BIN=%s\n' "$NODE_DIR" "$NETPOL_DIR" "$PAUSE_DIR"
  printf 'PROMETHEUS_BIN=%s\n' "$PROMETHEUS_DIR"
}

if [[ "${1:-}" == "--print" ]]; then
  print_dirs
  exit 0
fi

log() { printf '[control-plane %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Keep a heartbeat going during long builds so that nobody thinks it hung.
with_progress() {
  local what=$1; shift
  local start=$SECONDS
  ( while sleep 30; do log "$what: still building ($((SECONDS - start))s)"; done ) &
  local ticker=$!
  local rc=0
  "$@" || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  if (( rc != 0 )); then log "$what: FAILED (exit $rc)"; return $rc; fi
  log "$what: done in $((SECONDS - start))s"
}

fresh() { [[ -f "$1/.stamp" && "$(cat "$1/.stamp")" == "$2" ]]; }

k8s_ldflags() {
  local minor ld="-s -w"
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=2026-01-01T00:00:00Z"
  done
  echo "$ld"
}

build_k8s() {
  cd "$HERE/k8s"
  mkdir -p "$K8S_DIR.tmp"
  go build -trimpath -ldflags "$(k8s_ldflags)" -o "$K8S_DIR.tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
}

# The real node's kubelet and kube-proxy: the same module, pins and flags as above.
build_k8s_node() {
  cd "$HERE/k8s"
  mkdir -p "$NODE_DIR.tmp"
  go build -trimpath -ldflags "$(k8s_ldflags)" -o "$NODE_DIR.tmp/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
}

build_netpol() {
  cd "$HERE/netpol"
  local pinned
  pinned=$(go list -m -f '{{.Version}}' sigs.k8s.io/kube-network-policies)
  if [[ "$pinned" != "$NETPOL_VERSION" ]]; then
    log "netpol: versions.env says $NETPOL_VERSION but netpol/go.mod has $pinned"
    return 1
  fi
  mkdir -p "$NETPOL_DIR.tmp"
  go build -trimpath -ldflags "-s -w" -o "$NETPOL_DIR.tmp/kube-network-policies" \
    sigs.k8s.io/kube-network-policies/cmd
}

build_pause() {
  cd "$HERE/pause"
  mkdir -p "$PAUSE_DIR.tmp"
  go build -trimpath -ldflags "-s -w" -o "$PAUSE_DIR.tmp/pause" .
}

# Prometheus v3 is tagged v0.3xx.y as a Go module (v3.16.0 is v0.316.0). Tags:
# remove_all_sd drops every service-discovery plugin but static, file and http
# (prometheus/plugins/*.go: `//go:build !remove_all_sd || enable_<name>_sd`), so the cloud
# SDKs (AWS, Azure, GCE, ...) are not compiled; leaving out builtinassets keeps the
# React UI out of the binary (web/ui/ui.go serves it from disk, we never open it). The
# sandbox scrapes static targets and queries the HTTP API only.
build_prometheus() {
  cd "$HERE/prometheus"
  local pinned
  pinned=$(go list -m -f '{{.Version}}' github.com/prometheus/prometheus)
  if [[ "$pinned" != "$PROMETHEUS_VERSION" ]]; then
    log "prometheus: versions.env says $PROMETHEUS_VERSION but prometheus/go.mod has $pinned"
    return 1
  fi
  mkdir -p "$PROMETHEUS_DIR.tmp"
  go build -trimpath -tags remove_all_sd -ldflags "-s -w" -o "$PROMETHEUS_DIR.tmp/prometheus" \
    github.com/prometheus/prometheus/cmd/prometheus
}

build_etcd() {
  cd "$HERE/etcd"
  mkdir -p "$ETCD_DIR.tmp"
  go build -trimpath -ldflags "-s -w" -o "$ETCD_DIR.tmp/etcd" go.etcd.io/etcd/server/v3
}

build_kwok() {
  cd "$HERE/kwok"
  mkdir -p "$KWOK_DIR.tmp/stages"
  go build -trimpath -ldflags "-s -w" -o "$KWOK_DIR.tmp/kwok" sigs.k8s.io/kwok/cmd/kwok
  # kwok v0.8 ships no default stages in the binary; copy the ones we run with.
  local src
  src=$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage
  cp "$src/node/fast/node-initialize.yaml" \
     "$src/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
     "$src/pod/fast/pod-ready.yaml" "$src/pod/fast/pod-complete.yaml" \
     "$src/pod/fast/pod-delete.yaml" "$KWOK_DIR.tmp/stages/"
  chmod u+w "$KWOK_DIR.tmp/stages/"*
}

build_kstatus() {
  cd "$HERE/kstatus"
  local pinned
  pinned=$(go list -m -f '{{.Version}}' sigs.k8s.io/cli-utils)
  if [[ "$pinned" != "$KSTATUS_CLI_UTILS" ]]; then
    log "kstatus: versions.env says cli-utils $KSTATUS_CLI_UTILS but kstatus/go.mod has $pinned"
    return 1
  fi
  mkdir -p "$KSTATUS_DIR.tmp"
  go build -trimpath -ldflags "-s -w" -o "$KSTATUS_DIR.tmp/kstatus" .
}

component() {
  local name=$1 dir=$2 version=$3 fn=$4
  local stamp="$version $GOVER"
  if fresh "$dir" "$stamp"; then log "$name $version: cached in $dir"; return; fi
  log "$name $version: building (a cold build takes many minutes on 2 cores)"
  rm -rf "$dir.tmp"
  with_progress "$name $version" "$fn"
  echo "$stamp" > "$dir.tmp/.stamp"
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
}

mkdir -p "$BIN"
component etcd "$ETCD_DIR" "$ETCD_VERSION" build_etcd
component kwok "$KWOK_DIR" "$KWOK_VERSION" build_kwok
# Our own source is part of kstatus's key: editing main.go rebuilds it (in seconds).
KSTATUS_SRC=$(cat "$HERE"/kstatus/{main.go,go.mod,go.sum} | sha256sum | cut -c1-12)
component kstatus "$KSTATUS_DIR" "$KSTATUS_CLI_UTILS+src.$KSTATUS_SRC" build_kstatus
component kubernetes "$K8S_DIR" "$K8S_VERSION" build_k8s
want_real_node=0 want_prometheus=0
for arg in "$@"; do
  case $arg in
    --real-node) want_real_node=1 ;;
    --prometheus) want_prometheus=1 ;;
    *) log "unknown argument: $arg"; exit 2 ;;
  esac
done
if (( want_prometheus )); then
  component prometheus "$PROMETHEUS_DIR" "$PROMETHEUS_VERSION" build_prometheus
fi
if (( want_real_node )); then
  component pause "$PAUSE_DIR" "src.$PAUSE_SRC" build_pause
  component kubelet+kube-proxy "$NODE_DIR" "$K8S_VERSION" build_k8s_node
  component kube-network-policies "$NETPOL_DIR" "$NETPOL_VERSION" build_netpol
fi
print_dirs
