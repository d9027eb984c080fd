#!/usr/bin/env bash
# Runs the C/C++ test suite under sanitizers:
#   1. AddressSanitizer + UndefinedBehaviorSanitizer (-DNQ_SANITIZE=address,undefined):
#      the whole CTest suite, fuzz corpus and regression replays included;
#   2. ThreadSanitizer (-DNQ_SANITIZE=thread): tests/abi/test_threads, one context used
#      from 8 threads (with and without the library's own thread pool).
#   NQ_SANITIZE_SKIP  extra CTest -E regex of tests to leave out of step 1
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
compiler_args=()
# Either compiler works; clang's UBSan also checks enum loads and function casts.
if [ -n "${NQ_SANITIZE_CC:-}" ]; then
  compiler_args=(-DCMAKE_C_COMPILER="$NQ_SANITIZE_CC" -DCMAKE_CXX_COMPILER="${NQ_SANITIZE_CXX:-${NQ_SANITIZE_CC/clang/clang++}}")
fi

# -O1 without debug info: the sanitizers' usual level, and half the compile time of
# -O2 -g on the two cores CI has (function names still appear in the reports).
flags=(-DCMAKE_BUILD_TYPE=None -DCMAKE_C_FLAGS=-O1 -DCMAKE_CXX_FLAGS=-O1)

echo "== ASan + UBSan build (build-asan)"
cmake -S . -B build-asan "${compiler_args[@]}" "${flags[@]}" -DNQ_SANITIZE=address,undefined \
  -DNQ_BUILD_TESTS=ON -DNQ_BUILD_TOOLS=ON >/dev/null
cmake --build build-asan -j"$jobs" >/dev/null
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
skip=${NQ_SANITIZE_SKIP:-}
ctest --test-dir build-asan -j"$jobs" --output-on-failure ${skip:+-E "$skip"}

echo "== TSan build (build-tsan): tests/abi/test_threads"
cmake -S . -B build-tsan "${compiler_args[@]}" "${flags[@]}" -DNQ_SANITIZE=thread \
  -DNQ_BUILD_TESTS=ON -DNQ_BUILD_TOOLS=OFF >/dev/null
cmake --build build-tsan -j"$jobs" --target test_threads >/dev/null
TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1} build-tsan/tests/abi/test_threads
echo "sanitizers.sh: ASan+UBSan suite and TSan thread test passed"
