#!/usr/bin/env bash
# What the report tests need beyond Python: a real browser, Debian's Chromium, to open the
# HTML report headless (tests/e2e/test_reports.py). Installs it when missing and possible
# (root with apt-get); otherwise says what to install.
set -euo pipefail

for browser in chromium chromium-browser; do
  command -v "$browser" >/dev/null 2>&1 && exit 0
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing report tools: chromium"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null \
    || { apt-get update -q >/dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; }
else
  echo "missing report tools; install the Debian package: chromium (the HTML report's browser test)" >&2
  exit 1
fi
