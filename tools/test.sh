#!/usr/bin/env bash
# Builds the library and runs every test suite: C/C++ unit tests (CTest), the CLI
# tests, the Python binding and evaluation tests, the transformers integration under
# each tested transformers release, then (unless --quick) the Rust/Go
# bindings, sanitizers, fuzzers and - where its script exists - the GPU code's compile
# check. Usage: bash tools/test.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=$(nproc)
quick=${1:-}

step() { printf '\n==== %s\n' "$*"; }

step "configure + build (Release)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DNQ_BUILD_TESTS=ON >/dev/null
cmake --build build -j"$jobs"

step "unit, API and CLI tests (ctest)"
ctest --test-dir build -j"$jobs" --output-on-failure

step "install: find_package and pkg-config consumers"
bash tests/install/test_install.sh "$root" "$root/build"

step "Python binding and evaluation tests (pytest)"
export NEXUSQUANT_LIBRARY=$root/build/libnexusquant.so
( cd bindings/python && python3 -m pytest -q tests --ignore=tests/test_hf.py --ignore=tests/test_hf_models.py \
    --ignore=tests/test_hf_attend.py )

step "transformers integration under each tested transformers release (tools/hf_tests.sh)"
bash tools/hf_tests.sh

if [ "$quick" = "--quick" ]; then exit 0; fi

# The full run adds the Rust/Go bindings, the sanitizer builds (ASan+UBSan suite, TSan
# thread test), the fuzzers and the GPU code's compile check.
for script in .ci/bindings.sh .ci/sanitizers.sh .ci/fuzz.sh .ci/gpu_build.sh; do
  if [ -f "$script" ]; then
    step "$script"
    bash "$script"
  fi
done
step "all test suites passed"
