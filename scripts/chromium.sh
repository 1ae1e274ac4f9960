#!/usr/bin/env bash
# Install Debian's `chromium` for the status page's browser test (tests/daemon/test_status_page.py), which
# Playwright drives with executable_path=/usr/bin/chromium (no browser download). Idempotent: a no-op when
# /usr/bin/chromium is there. Needs root or passwordless sudo the first time. chromium-driver is not needed.
set -euo pipefail
if [[ -x /usr/bin/chromium ]]; then
    exit 0
fi
sudo=
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "chromium.sh: run as root or install sudo: apt-get install chromium" >&2; exit 1; }
    sudo="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y --no-install-recommends chromium >/dev/null \
    || { $sudo apt-get update -qq && $sudo apt-get install -y --no-install-recommends chromium >/dev/null; }
[[ -x /usr/bin/chromium ]] || { echo "chromium.sh: /usr/bin/chromium still missing after apt-get" >&2; exit 1; }
