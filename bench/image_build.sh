#!/usr/bin/env bash
# Measures `make image` (tools/images/build.sh) in a temporary SHAKEOUT_CACHE: cold (no
# rootfs, no buildah storage: debootstrap runs), unchanged (every key matches), and the
# operator and workload images rebuilt on the cached base (their archives deleted, as
# after a source change); then the images' sizes and `make test-image`'s test time.
# Usage: bench/image_build.sh   (root; a few minutes; needs the Debian mirror and PyPI)
# buildah and debootstrap must be installed already, so that their install is not timed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export SHAKEOUT_CACHE=$TMP/shakeout
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$EPOCHREALTIME"; }
build() {
  local start=$EPOCHREALTIME
  bash "$ROOT/tools/images/build.sh" 2>"$TMP/build.log" || { cat "$TMP/build.log" >&2; exit 1; }
  elapsed "$start"
}
cold=$(build)
unchanged=$(build)
rm "$SHAKEOUT_CACHE/images/operator.tar" "$SHAKEOUT_CACHE/images/workload.tar"
rebuilt=$(build)
start=$EPOCHREALTIME
(cd "$ROOT" && SHAKEOUT_IMAGE_TESTS=required .venv/bin/pytest tests/image -q -p no:cacheprovider >"$TMP/test.log") \
  || { cat "$TMP/test.log" >&2; exit 1; }
tests=$(elapsed "$start")
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml" | head -n1)
mb() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e6:.1f}')" "$1"; }
B() { buildah --root "$SHAKEOUT_CACHE/image-build/storage" --runroot "$TMP/run" --storage-driver vfs "$@"; }
echo "| make image, cold (debootstrap, wheels, both images, export) | ${cold} s |"
echo "| make image, nothing changed | ${unchanged} s |"
echo "| make image, operator and workload rebuilt on the cached base | ${rebuilt} s |"
echo "| make test-image's tests (unpack both archives, chroot, run) | ${tests} s |"
echo
echo "| image | archive (compressed) | unpacked |"
echo "|---|---|---|"
for ref in localhost/shakeout/debian-base:bookworm localhost/shakeout/operator:$VERSION localhost/shakeout/workload:1; do
  name=$(basename "${ref%%:*}")
  archive=-
  [[ -f $SHAKEOUT_CACHE/images/$name.tar ]] && archive="$(mb "$(stat -c %s "$SHAKEOUT_CACHE/images/$name.tar")") MB"
  echo "| $ref | $archive | $(B images --noheading --format '{{.Size}}' "$ref") |"
done
rootfs=("$SHAKEOUT_CACHE"/image-build/rootfs-*.tar)
echo "| (the cached rootfs tarball) | | $(mb "$(stat -c %s "${rootfs[0]}")") MB |"
rm -rf "$TMP/run"
