#!/usr/bin/env bash
# Install every Debian package bulwark needs. A no-op when all are present.
set -euo pipefail
PACKAGES=(
  build-essential gcc clang cmake ninja-build pkg-config git
  libclang-rt-14-dev          # clang's sanitizer and libFuzzer runtimes
  libuv1-dev libcurl4-openssl-dev libhiredis-dev libfyaml-dev
  libcmocka-dev valgrind
  redis-server nginx-light    # real servers for integration tests, demo, benchmarks
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi
echo "setup: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The distribution's services are not ours: tests start their own on free ports.
for svc in redis-server nginx; do
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
  $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
