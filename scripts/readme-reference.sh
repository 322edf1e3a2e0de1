#!/usr/bin/env bash
# The README's "Config reference" section is `bulwark reference` with its
# headings one level down. Usage:
#   scripts/readme-reference.sh BULWARK_BIN          check (exit 1 if stale)
#   scripts/readme-reference.sh BULWARK_BIN --write  rewrite the section
set -euo pipefail
bin=$1 mode=${2:-check}
readme="$(dirname "$0")/../README.md"
start='<!-- reference:start -->' end='<!-- reference:end -->'
want=$("$bin" reference | sed 's/^#/##/')
have=$(sed -n "/^$start\$/,/^$end\$/p" "$readme" | sed '1d;$d')
if [[ $mode == --write ]]; then
  python3 - "$readme" "$start" "$end" "$want" <<'PY'
import sys
p, start, end, want = sys.argv[1:5]
s = open(p).read()
a = s.index(start) + len(start); b = s.index(end)
open(p, 'w').write(s[:a] + "\n" + want.strip() + "\n" + s[b:])
PY
  exit 0
fi
if [[ "$(echo "$have" | sed '/^$/d')" != "$(echo "$want" | sed '/^$/d')" ]]; then
  echo "README.md config reference is stale: run scripts/readme-reference.sh $bin --write" >&2
  diff <(echo "$have") <(echo "$want") | head -20 >&2
  exit 1
fi
echo "README config reference matches bulwark reference"
