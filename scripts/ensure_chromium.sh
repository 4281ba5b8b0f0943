#!/usr/bin/env bash
# The browser test's Chromium (Debian's `chromium`): installed with apt-get when running as root and
# missing; otherwise the test is skipped, saying so.
set -euo pipefail
if command -v chromium >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "chromium not found: installing the Debian package chromium for the browser test"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  exit 0
fi
echo "chromium is not installed (sudo apt-get install chromium): the browser test will be skipped" >&2
