#!/usr/bin/env bash
# Usage: check_install.sh BINARY_DIR CONSUMER_SOURCE_DIR
set -euo pipefail
bin=$1 src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$bin" --prefix "$work/prefix" >/dev/null
libdir=$(ls -d "$work"/prefix/lib*/ | head -1)

# 1. pkg-config, shared; then libbulwark.a with its dependencies shared
#    (Debian ships no static libldap/libzstd for a fully static curl).
export PKG_CONFIG_PATH="$libdir/pkgconfig"
cc -std=c11 -Wall -Werror -o "$work/pc_shared" "$src/main.c" $(pkg-config --cflags --libs bulwark)
LD_LIBRARY_PATH="$libdir" "$work/pc_shared" | grep -qx "bulwark consumer ok"
cc -std=c11 -Wall -Werror -o "$work/pc_static" "$src/main.c" $(pkg-config --cflags bulwark) \
   "$libdir/libbulwark.a" $(pkg-config --libs libuv libcurl hiredis libfyaml) -lpthread -lm
"$work/pc_static" | grep -qx "bulwark consumer ok"

# 2. CMake package.
cmake -S "$src" -B "$work/cm" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/cm" >/dev/null
LD_LIBRARY_PATH="$libdir" "$work/cm/consumer" | grep -qx "bulwark consumer ok"
"$work/cm/consumer_static" | grep -qx "bulwark consumer ok"
# 3. dlopen of the shared library (static TLS must fit, see the program).
cc -std=c11 -Wall -Werror -o "$work/dl" "$(dirname "$src")/dlopen_consumer.c" \
   $(pkg-config --cflags bulwark) -ldl
"$work/dl" "$libdir/libbulwark.so" | grep -qx "bulwark dlopen ok"
echo "install: pkg-config (shared, static), find_package (shared, static) and dlopen ok"
