#!/usr/bin/env bash
# The whole test suite: set up, then build and run every cmocka suite under
# ctest in the dev, asan (ASan+UBSan) and tsan presets, then valgrind on the
# examples. Usage: scripts/test.sh [preset...]   (default: dev asan tsan)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export BW_WERROR=ON
presets=("$@"); ((${#presets[@]})) || presets=(dev asan tsan)
for p in "${presets[@]}"; do
  echo "=== preset $p ==="
  cmake --preset "$p" >/dev/null
  cmake --build --preset "$p"
  ctest --preset "$p"
done
if [[ " ${presets[*]} " == *" dev "* ]]; then
  echo "=== fuzz: config loader, fixed time, fails on any crash or leak ==="
  cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz
  ctest --preset fuzz

  echo "=== valgrind on the examples ==="
  bash scripts/valgrind-examples.sh build/dev
fi
echo "all test presets passed: ${presets[*]}"
