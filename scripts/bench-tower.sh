#!/usr/bin/env bash
# The tower 0.4 reference for BENCH.md's layers table (issue #3), measured on
# this machine: builds bench/tower_ref offline from Debian's packaged crate
# sources, runs it, and then, if bench/layers is built, runs bulwark's
# bench/layers and the tower binary alternately and prints bulwark/tower
# ratios. The goal is stated against tower's figures from another machine;
# only ratios from one run on one machine are comparable.
#
#   scripts/bench-tower.sh            # from anywhere; bulwark's binary is
#                                     # build/release/bench/layers
#   LAYERS=/path/to/layers scripts/bench-tower.sh   # another layers build
#   PAIRS=5 scripts/bench-tower.sh    # more alternating pairs (default 3)
#
# Build bench/layers first for the comparison (from the repo root):
#   cmake --preset release && cmake --build --preset release
# Run nothing else heavy meanwhile: this 2-vCPU VM is noisy as it is.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROJ=$ROOT/bench/tower_ref
TARGET=$ROOT/build/tower_ref # git-ignored, as bench/tower_ref/.cargo/config.toml says
TOWER=$TARGET/release/tower_ref
LAYERS=${LAYERS:-$ROOT/build/release/bench/layers}
PAIRS=${PAIRS:-3}

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo

# crates.io is not reachable here: tower, tokio, futures and libc come as
# Debian source packages in /usr/share/cargo/registry, which
# bench/tower_ref/.cargo/config.toml uses as a directory source, offline.
# (One package brings every tower feature; tokio's likewise.)
CRATES=(librust-tower-dev librust-tokio-dev librust-futures-dev librust-libc-dev)
missing=()
for p in "${CRATES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# Any cargo will do: rustup's if there is one (on PATH or in ~/.cargo/bin),
# else Debian's (1.63; the project keeps to what 1.63 accepts).
CARGO=$(command -v cargo || true)
[ -n "$CARGO" ] || { [ -x "$HOME/.cargo/bin/cargo" ] && CARGO=$HOME/.cargo/bin/cargo; } || true
if [ -z "$CARGO" ]; then missing+=(cargo rustc); fi

if ((${#missing[@]})); then
  echo "bench-tower: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
[ -n "$CARGO" ] || CARGO=$(command -v cargo)
# rustc from the same toolchain as cargo (rustup's cargo finds its own).
export PATH="$(dirname "$CARGO"):$PATH"

# cargo reads .cargo/config.toml from the directory it runs in, so build from
# inside the project. --locked: build exactly the committed Cargo.lock (the
# versions of Debian 12's packages). If Debian's versions have moved since,
# the lock cannot be met; say so and let cargo re-resolve (Cargo.lock then
# shows as modified in git: the versions actually built).
cd "$PROJ"
echo "# $("$CARGO" --version); $(rustc --version)"
if ! "$CARGO" build --release --offline --locked --target-dir "$TARGET"; then
  echo "bench-tower: the committed Cargo.lock does not build here; re-resolving (see git diff $PROJ/Cargo.lock)" >&2
  "$CARGO" build --release --offline --target-dir "$TARGET"
fi
cd "$ROOT"

# The versions actually built, from the lock file.
awk '/^name = /{n=$3} /^version = /{v=$3; gsub(/"/,"",n); gsub(/"/,"",v);
     if (n ~ /^(tower|tower-layer|tower-service|tokio|tokio-util|futures-util|libc)$/) printf "# built %s %s\n", n, v}' \
  "$PROJ/Cargo.lock"

echo "# tower_ref alone"
"$TOWER"

if [ ! -x "$LAYERS" ]; then
  echo "# $LAYERS not built: no bulwark/tower ratios (cmake --preset release && cmake --build --preset release)"
  exit 0
fi

# Alternate the two programs so that this VM's drift (tens of percent within
# a minute) falls on both alike, and judge each pair on its own ratio.
echo "# bulwark: $LAYERS (built $(date -r "$LAYERS" '+%F %T'); repo HEAD $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
val() { awk -v k="$1" '$1 == k {print $2}' <<<"$2"; }
ratios_s=() ratios_64=()
for ((i = 1; i <= PAIRS; i++)); do
  echo "# ---- pair $i of $PAIRS: bench/layers"
  lo=$("$LAYERS"); echo "$lo"
  echo "# ---- pair $i of $PAIRS: tower_ref"
  to=$("$TOWER"); echo "$to"
  bs=$(val call_stack "$lo") b64=$(val call_stack_64 "$lo")
  ts=$(val tower_call_stack "$to") t64=$(val tower_call_stack_64 "$to")
  if [ -z "$bs" ] || [ -z "$b64" ] || [ -z "$ts" ] || [ -z "$t64" ]; then
    echo "bench-tower: a call_stack or call_stack_64 line is missing from the output above" >&2
    exit 1
  fi
  # Goal (issue #3): the full bulwark stack at half of tower's cost or better,
  # i.e. bulwark <= 0.5 x tower, for one call at a time and for 64 in flight.
  read -r rs r64 vs v64 < <(awk -v bs="$bs" -v ts="$ts" -v b64="$b64" -v t64="$t64" 'BEGIN {
      printf "%.2f %.2f %s %s\n", bs/ts, b64/t64,
        (bs <= 0.5*ts ? "yes" : "no"), (b64 <= 0.5*t64 ? "yes" : "no") }')
  ratios_s+=("$rs") ratios_64+=("$r64")
  echo "pair$i call_stack bulwark $bs tower $ts ns/call ratio $rs half_of_tower $vs"
  echo "pair$i call_stack_64 bulwark $b64 tower $t64 ns/call ratio $r64 half_of_tower $v64"
done

med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "# bulwark/tower over $PAIRS pairs (<= 0.50 meets the goal): call_stack ${ratios_s[*]} (median $(med "${ratios_s[@]}")), call_stack_64 ${ratios_64[*]} (median $(med "${ratios_64[@]}"))"
