#!/usr/bin/env bash
# The whole test suite: set up, then build and run every cmocka suite under
# ctest in the dev, asan (ASan+UBSan) and tsan presets (after the asan
# suites, the main demo built with ASan+UBSan), then valgrind on the
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
  if [[ $p == asan ]]; then
    echo "=== the demo (real Redis and HTTP servers, faults injected) under ASan+UBSan ==="
    BW_DEMO_PRESET=asan BW_DEMO_PHASE_MS=1500 bash scripts/demo.sh >build/asan/demo.log 2>&1 ||
      { tail -n 60 build/asan/demo.log; echo "demo under asan failed (build/asan/demo.log)" >&2; exit 1; }
    tail -n 5 build/asan/demo.log
  fi
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
