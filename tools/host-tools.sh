#!/usr/bin/env bash
# The host tools that the node agent drives and its tests need: nft (nftables), ip and tc
# (iproute2), nsenter and unshare (util-linux). Installs what is missing from Debian's
# packages when it can (root with apt-get); otherwise says what to install.
set -euo pipefail

declare -A package=([nft]=nftables [ip]=iproute2 [tc]=iproute2 [nsenter]=util-linux [unshare]=util-linux)
missing=()
for tool in nft ip tc nsenter unshare; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${package[$tool]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing host tools: $packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $packages >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $packages >/dev/null; }
else
  echo "missing host tools; install the Debian packages: $packages (node-agent tests need root)" >&2
  exit 1
fi
