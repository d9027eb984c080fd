#!/usr/bin/env bash
# Installs the library into a temporary prefix and builds a consumer against it twice:
# with CMake's find_package and with pkg-config. Then checks the build tree's
# uninstalled .pc. Usage: test_install.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src=$1
build=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
libdir=$(ls -d "$tmp"/prefix/lib*/ | head -1)
test -f "$tmp/prefix/include/nexusquant.h"
test -f "$libdir/pkgconfig/nexusquant.pc"
ls "$libdir"/libnexusquant.so.0 "$libdir"/libnexusquant.a >/dev/null

cmake -S "$src/tests/install/consumer" -B "$tmp/cmake-consumer" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/cmake-consumer" >/dev/null
LD_LIBRARY_PATH="$libdir" "$tmp/cmake-consumer/consumer"

export PKG_CONFIG_PATH="$libdir/pkgconfig"
cc -std=c99 "$src/tests/install/consumer/main.c" $(pkg-config --cflags --libs nexusquant) -o "$tmp/pc-consumer"
LD_LIBRARY_PATH="$libdir" "$tmp/pc-consumer"

export PKG_CONFIG_PATH="$build/pkgconfig-uninstalled"
cc -std=c99 "$src/tests/install/consumer/main.c" $(pkg-config --cflags --libs nexusquant) -o "$tmp/uninst-consumer"
LD_LIBRARY_PATH="$build" "$tmp/uninst-consumer"
echo "install test passed"
