#!/usr/bin/env bash
# `make image`: shakeout's images, built with buildah without a container engine, a
# daemon or a registry (docs/images.md).
#
#   localhost/shakeout/debian-base:bookworm  Debian bookworm minbase made here with
#       debootstrap from the machine's Debian mirror, with python3 and the node agent's
#       tools (nftables, iproute2, util-linux). Cached by a key: its rootfs tarball is kept.
#   localhost/shakeout/operator:<version>    the Containerfile on that base: a wheel of
#       this checkout and its dependencies (wheels from PyPI) in /opt/shakeout
#   localhost/shakeout/workload:1            images/workload: a static Go HTTP server
#       with Prometheus metrics, from scratch
#
# The operator and workload images are exported as OCI archives to
# $SHAKEOUT_CACHE/images/<name>.tar (default ~/.cache/shakeout/images), which
# `shakeout sandbox up --real-node` imports into containerd. Everything else (buildah's
# storage, the rootfs tarballs, the build contexts) is in $SHAKEOUT_CACHE/image-build.
# An image whose inputs did not change is not rebuilt. `build.sh workload` builds only the
# workload image (what `make run` needs on the real node).
#
# Needs root (debootstrap, buildah's storage); installs buildah and debootstrap from
# Debian's packages when they are missing, and needs go (the workload) and python3 with
# pip (the wheels) on PATH.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$REPO/tools/images
CACHE=${SHAKEOUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shakeout}
OUT=$CACHE/images
WORK=$CACHE/image-build
STORE=$WORK/storage
RUNROOT=${XDG_RUNTIME_DIR:-/run}/shakeout-buildah
POLICY=$HERE/policy.json

SUITE=bookworm
PYTHON_VERSION=3.11   # bookworm's python3: the wheels are chosen for it
BASE_PACKAGES="python3 nftables iproute2 util-linux"
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -n1)
BASE_REF=localhost/shakeout/debian-base:$SUITE
OPERATOR_REF=localhost/shakeout/operator:$VERSION
WORKLOAD_REF=localhost/shakeout/workload:1

log() { printf '[image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "$*"; exit 1; }

# --- what this needs --------------------------------------------------------------------
[[ $(id -u) == 0 ]] || die "make image needs root (debootstrap, buildah's storage)"
missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if (( ${#missing[@]} )); then
  command -v apt-get >/dev/null 2>&1 \
    || die "missing tools; install the Debian packages: ${missing[*]}"
  log "installing ${missing[*]} (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
fi
command -v go >/dev/null 2>&1 || die "go is not on PATH (the workload image is a Go program)"
PY=python3
[[ -x $REPO/.venv/bin/python ]] && PY=$REPO/.venv/bin/python
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip (the operator image's wheels)"

# The Debian mirror this machine's apt uses (deb822 or one-line sources), unless given.
mirror() {
  local uri
  uri=$(awk '/^URIs:/{u=$2} /^Suites:/{if (u && $0 ~ /(^|[ \t])'"$SUITE"'([ \t]|$)/) {print u; exit}}' \
          /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [[ -n $uri ]] || uri=$(awk '$1=="deb" && $3=="'"$SUITE"'" {print $2; exit}' \
                           /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR=${DEBIAN_MIRROR:-$(mirror)}

B() { buildah --root "$STORE" --runroot "$RUNROOT" --storage-driver vfs "$@"; }

# buildah keeps a blob-info cache in /var/lib/containers/cache whatever --root says.
had_blob_cache=$([[ -e /var/lib/containers/cache ]] && echo yes || echo no)
ROOTFS=$WORK/rootfs.tmp
cleanup() {
  B rm --all >/dev/null 2>&1 || true   # working containers of this private storage only
  if [[ -d $ROOTFS ]]; then            # an interrupted debootstrap: its mounts, then it
    findmnt -rn -o TARGET | grep -F "$ROOTFS/" | sort -r | xargs -r -n1 umount -l || true
    rm -rf "$ROOTFS"
  fi
  # Left alone while another buildah runs: it may be someone else's now.
  if [[ $had_blob_cache == no ]] && ! pgrep -x buildah >/dev/null; then
    rm -rf /var/lib/containers/cache
    rmdir /var/lib/containers 2>/dev/null || true
  fi
  rm -rf "$RUNROOT"                    # buildah's run-time state (locks) of this build
  return 0
}
trap cleanup EXIT

label() {  # label IMAGE KEY: the image's label KEY, or nothing
  B inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}

export_archive() {  # export_archive REF NAME: $OUT/NAME.tar, written whole or not at all
  mkdir -p "$OUT"
  rm -f "$OUT/$2.tar.part"
  B push --quiet --signature-policy "$POLICY" "$1" "oci-archive:$OUT/$2.tar.part:$1"
  mv "$OUT/$2.tar.part" "$OUT/$2.tar"
  log "$1 -> $OUT/$2.tar ($(du -m "$OUT/$2.tar" | cut -f1) MB)"
}

# --- the base: Debian minbase + python3 + the agent's tools -----------------------------
make_rootfs() {
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase --components=main --include="${BASE_PACKAGES// /,}" \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
  # What an image does not need: apt's lists and archives, docs (but their copyright
  # files), man pages, locales, logs; the host's hostname and resolv.conf (the runtime
  # provides both).
  (
    cd "$ROOTFS"
    rm -rf var/lib/apt/lists/* var/cache/apt/*.bin var/cache/apt/archives/*.deb \
      usr/share/man/* usr/share/info/* usr/share/locale/* var/cache/debconf/*-old
    find usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
    find usr/share/doc -mindepth 1 -type d -empty -delete
    find var/log -type f -delete
    : >etc/hostname
    : >etc/resolv.conf
  )
  tar -C "$ROOTFS" --numeric-owner -cf "$1.part" .
  mv "$1.part" "$1"
  rm -rf "$ROOTFS"
}

BASE_KEY=$(printf '%s\n' "$SUITE" "$MIRROR" "$BASE_PACKAGES" "$(declare -f make_rootfs)" \
           | sha256sum | cut -c1-12)

base_image() {
  local start=$SECONDS rootfs=$WORK/rootfs-$SUITE-$BASE_KEY.tar c m
  if [[ $(label "$BASE_REF" dev.shakeout.base-key) == "$BASE_KEY" ]]; then
    log "$BASE_REF: cached (key $BASE_KEY)"
    return
  fi
  if [[ -f $rootfs ]]; then
    log "rootfs: cached in $rootfs"
  else
    log "rootfs: debootstrap $SUITE minbase from $MIRROR with $BASE_PACKAGES (a minute or two)"
    rm -f "$WORK"/rootfs-"$SUITE"-*.tar   # older keys
    make_rootfs "$rootfs"
    log "rootfs: $(du -m "$rootfs" | cut -f1) MB in $((SECONDS - start)) s"
  fi
  c=$(B from scratch)
  m=$(B mount "$c")
  tar -C "$m" --numeric-owner -xpf "$rootfs"
  B umount "$c" >/dev/null
  B config --os linux --arch amd64 --cmd '["/bin/bash"]' \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --label dev.shakeout.base-key="$BASE_KEY" \
    --label org.opencontainers.image.description="Debian $SUITE minbase with $BASE_PACKAGES" "$c"
  B commit --quiet --rm --format oci --signature-policy "$POLICY" "$c" "$BASE_REF" >/dev/null
  log "$BASE_REF: built in $((SECONDS - start)) s"
}

# --- the operator and node-agent image ---------------------------------------------------
operator_image() {
  local start=$SECONDS ctx=$WORK/operator-context key platforms=() v
  rm -rf "$ctx"
  mkdir -p "$ctx/src" "$ctx/wheels" "$ctx/pip"
  # A wheel of this checkout as it is (uncommitted edits included), built from a copy.
  tar -C "$REPO" --exclude=__pycache__ -cf - pyproject.toml README.md operator | tar -C "$ctx/src" -xf -
  # The key: the Containerfile, the base and the source (pyproject.toml's dependencies
  # included). Their resolved versions are not part of it: they are looked up again when
  # the source changes.
  key=$( { cat "$REPO/Containerfile"; echo "$BASE_KEY";
           tar -C "$ctx/src" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . ; } \
         | sha256sum | cut -c1-12)
  if [[ $(label "$OPERATOR_REF" dev.shakeout.key) == "$key" && -f $OUT/operator.tar ]]; then
    rm -rf "$ctx"
    log "$OPERATOR_REF: cached (key $key)"
    return
  fi
  "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$ctx/wheels" "$ctx/src"
  # Its dependencies as wheels for bookworm's CPython (glibc 2.36), not for this host's.
  for v in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${v}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64 --platform linux_x86_64)
  "$PY" -m pip download --quiet --dest "$ctx/wheels" --only-binary=:all: "${platforms[@]}" \
    --python-version "$PYTHON_VERSION" --implementation cp --abi "cp${PYTHON_VERSION/./}" \
    "$ctx"/wheels/shakeout-*.whl
  # pip runs from its wheel at build time only: the image gets no pip.
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$ctx/pip" pip
  mv "$ctx"/pip/pip-*.whl "$ctx/pip.whl"
  rm -rf "$ctx/src" "$ctx/pip"
  log "$OPERATOR_REF: building ($(ls "$ctx/wheels" | wc -l) wheels)"
  B bud --quiet --signature-policy "$POLICY" --isolation chroot --pull=never --squash \
    --format oci --build-arg BASE="$BASE_REF" --label dev.shakeout.key="$key" \
    -f "$REPO/Containerfile" -t "$OPERATOR_REF" "$ctx" >/dev/null
  export_archive "$OPERATOR_REF" operator
  log "$OPERATOR_REF: built in $((SECONDS - start)) s"
}

# --- the workload image --------------------------------------------------------------------
workload_image() {
  local start=$SECONDS src=$REPO/images/workload ctx=$WORK/workload-context key
  key=$( { cat "$src"/go.mod "$src"/main.go "$src"/Containerfile; go env GOVERSION; } \
         | sha256sum | cut -c1-12)
  if [[ $(label "$WORKLOAD_REF" dev.shakeout.key) == "$key" && -f $OUT/workload.tar ]]; then
    log "$WORKLOAD_REF: cached (key $key)"
    return
  fi
  rm -rf "$ctx"
  mkdir -p "$ctx"
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$ctx/workload" .)
  B bud --quiet --signature-policy "$POLICY" --pull=never --format oci \
    --label dev.shakeout.key="$key" -f "$src/Containerfile" -t "$WORKLOAD_REF" "$ctx" >/dev/null
  export_archive "$WORKLOAD_REF" workload
  log "$WORKLOAD_REF: built in $((SECONDS - start)) s"
}

mkdir -p "$WORK" "$STORE"
total=$SECONDS
case ${1:-all} in
  all) base_image; operator_image; workload_image ;;
  workload) workload_image ;;   # all `make run` needs on the real node (make image-workload)
  *) die "usage: build.sh [all|workload]" ;;
esac
B rmi --prune >/dev/null 2>&1 || true   # images a rebuild left untagged
log "done in $((SECONDS - total)) s: $(ls "$OUT"/*.tar | tr '\n' ' ')"
