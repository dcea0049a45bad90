#!/usr/bin/env bash
# Install the services the test suite starts by itself (Debian/Ubuntu):
#   prometheus + promtool  tests/test_prometheus.py (a real Prometheus scrapes `rtpick run`)
#   systemd-analyze        tests/test_systemd.py (unit files pass `systemd-analyze verify`)
# Idempotent: does nothing when both are present. Runs apt-get as root (or via sudo).
# Package scripts are kept from starting the Debian prometheus service: the tests
# start their own server on a free port with a temporary data directory.
set -euo pipefail
need=()
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
