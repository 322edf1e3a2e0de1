#!/usr/bin/env bash
# The main demo: set up, build (release), and run examples/demo with
# examples/stacks.yaml against a real redis-server and the project's
# misbehaving HTTP server, both started on loopback by the demo itself.
# Until the config-driven demo exists, runs the runtime tour instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release
if [[ -x build/release/examples/demo && -f examples/stacks.yaml ]]; then
  exec build/release/examples/demo examples/stacks.yaml
fi
exec build/release/examples/runtime_tour
