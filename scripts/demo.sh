#!/usr/bin/env bash
# The main demo: install what is missing, build (release preset), start a
# real redis-server and the project's misbehaving HTTP server (bw-test-httpd)
# on free loopback ports, and run examples/demo with its config through
# three phases (healthy, faults, recovery). Everything it started is stopped
# on exit, also on failure or Ctrl-C.
#
#   bash scripts/demo.sh             config: $BW_DEMO_CONFIG or examples/stacks.yaml
#   BW_DEMO_PHASE_MS=2000 bash scripts/demo.sh   shorter phases
#   BW_DEMO_PRESET=asan bash scripts/demo.sh     built with ASan+UBSan
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bash scripts/setup.sh
# BW_DEMO_PRESET=asan runs the same demo built with ASan+UBSan (the test
# suite does: a fault only the faulted demo hit once went unseen).
preset=${BW_DEMO_PRESET:-release}
if [[ $preset == asan ]]; then
  export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:abort_on_error=1:detect_leaks=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
fi
cmake --preset "$preset" >/dev/null
# Only what the demo needs (the full build is `cmake --build --preset <preset>`).
cmake --build --preset "$preset" --target example_demo example_runtime_tour bw-test-httpd

bin=$root/build/$preset
config=${BW_DEMO_CONFIG:-examples/stacks.yaml}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bulwark-demo.XXXXXX")
redis_pid="" httpd_pid="" demo_pid=""

cleanup() {
  local rc=$?
  if [[ -n $demo_pid ]]; then kill "$demo_pid" 2>/dev/null || true; wait "$demo_pid" 2>/dev/null || true; fi
  # A paused Redis ignores SIGTERM until continued.
  if [[ -n $redis_pid ]]; then kill -CONT "$redis_pid" 2>/dev/null || true; kill "$redis_pid" 2>/dev/null || true; fi
  if [[ -n $httpd_pid ]]; then kill "$httpd_pid" 2>/dev/null || true; fi
  for p in $redis_pid $httpd_pid; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  ((rc == 0)) || echo "demo: failed (exit $rc)" >&2
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Redis on a free port: pick a random one, retry if it was taken meanwhile.
redis_port=""
for _ in $(seq 20); do
  p=$((20000 + RANDOM % 40000))
  if port_in_use "$p"; then continue; fi
  redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --logfile "$tmp/redis.log" --dir "$tmp" &
  redis_pid=$!
  for _ in $(seq 50); do
    if [[ $(redis-cli -h 127.0.0.1 -p "$p" ping 2>/dev/null) == PONG ]]; then redis_port=$p; break; fi
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -n $redis_port ]]; then break; fi
  kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; redis_pid=""
done
[[ -n $redis_port ]] || { echo "demo: could not start redis-server" >&2; tail -n 5 "$tmp/redis.log" >&2 || true; exit 1; }

# The HTTP fixture picks its own free port and prints "PORT <n>".
"$bin/tests/clients/httpd/bw-test-httpd" >"$tmp/httpd.out" 2>"$tmp/httpd.log" &
httpd_pid=$!
http_port=""
for _ in $(seq 50); do
  http_port=$(awk '/^PORT /{print $2}' "$tmp/httpd.out" 2>/dev/null)
  if [[ -n $http_port ]]; then break; fi
  kill -0 "$httpd_pid" 2>/dev/null || break
  sleep 0.1
done
[[ -n $http_port ]] || { echo "demo: could not start bw-test-httpd" >&2; cat "$tmp/httpd.log" >&2 || true; exit 1; }

echo "demo: redis-server on 127.0.0.1:$redis_port (pid $redis_pid), bw-test-httpd on 127.0.0.1:$http_port"
# In the background and waited for, so a signal to this script runs the
# cleanup at once (the demo itself resumes a paused Redis when killed).
BW_DEMO_HTTP_PORT=$http_port BW_DEMO_REDIS_PORT=$redis_port BW_DEMO_REDIS_PID=$redis_pid \
  "$bin/examples/demo" "$config" &
demo_pid=$!
status=0
wait "$demo_pid" || status=$?
demo_pid=""
exit $status
