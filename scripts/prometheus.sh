#!/usr/bin/env bash
# Install Debian's `prometheus` package (the server and promtool) for the tests of deploy/prometheus/
# (tests/deploy/test_prometheus.py). Idempotent: a no-op when both binaries are on the PATH. Needs root or
# passwordless sudo the first time; the package's own service is not started (the tests run their own server).
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    exit 0
fi
sudo=
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "prometheus.sh: run as root or install sudo: apt-get install prometheus" >&2; exit 1; }
    sudo="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: the package's postinst does not start its service (no init here, or not wanted on CI)
policy=/usr/sbin/policy-rc.d
created=
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod 755 "$policy" && created=1
fi
trap '[[ -n $created ]] && $sudo rm -f "$policy"' EXIT
$sudo apt-get install -y --no-install-recommends prometheus >/dev/null \
    || { $sudo apt-get update -qq && $sudo apt-get install -y --no-install-recommends prometheus >/dev/null; }
command -v promtool >/dev/null || { echo "prometheus.sh: promtool still missing after apt-get" >&2; exit 1; }
