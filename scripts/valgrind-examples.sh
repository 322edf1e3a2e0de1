#!/usr/bin/env bash
# Run each example that takes no servers under valgrind; any leak or error fails.
set -euo pipefail
dir=${1:-build/dev}
shopt -s nullglob
status=0
for ex in examples/*.c; do
  name=$(basename "$ex" .c)
  # Examples that need servers declare `// valgrind: skip` on their first line.
  head -1 "$ex" | grep -q 'valgrind: skip' && continue
  echo "valgrind $name"
  if ! valgrind --quiet --leak-check=full --show-leak-kinds=definite,indirect,possible \
       --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=99 \
       "$dir/examples/$name" >/tmp/bw-valgrind-$name.log 2>&1; then
    echo "valgrind FAILED on $name:"; cat /tmp/bw-valgrind-$name.log; status=1
  fi
done
exit $status
