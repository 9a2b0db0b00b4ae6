#!/usr/bin/env bash
# The Debian packages the sandbox's real node needs (`shakeout sandbox up --real-node`):
# containerd and runc (the runtime), containernetworking-plugins (bridge, host-local),
# iptables (the policy engine's NFQUEUE steering; kubelet's canary chains), nftables
# (kube-proxy's mode), iproute2, conntrack, buildah and busybox-static (the pause and
# busybox-httpd images). Installs what is missing when it can (root with apt-get);
# otherwise says what to install. No daemon is started by the install (no systemd here).
set -euo pipefail

declare -A package=(
  [containerd]=containerd [containerd-shim-runc-v2]=containerd [ctr]=containerd [runc]=runc
  [iptables]=iptables [nft]=nftables [ip]=iproute2 [conntrack]=conntrack
  [buildah]=buildah [busybox]=busybox-static
)
missing=()
for tool in "${!package[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${package[$tool]}")
done
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing the real node's packages: $packages"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $packages >/dev/null \
    || { apt-get update -q >/dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $packages >/dev/null; }
else
  echo "missing packages for the real node; install the Debian packages: $packages (it needs root)" >&2
  exit 1
fi
