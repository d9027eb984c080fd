#!/usr/bin/env bash
# Compiles the GPU code on a machine without a GPU:
#   1. CUDA (nvcc on PATH or in /usr/local/cuda/bin): the library, the GPU tests
#      (tests/gpu) and the GPU benchmark (bench/gpu) for one architecture, then runs the
#      GPU tests, which skip without a device (all of them run where there is one);
#   2. HIP (hipcc): the library with the CUDA sources compiled through
#      backends/hip/hip_compat.h for each AMD target, checked to hold code for all.
# A toolchain that is not installed is skipped with a message; one that is installed
# must build.
#   NQ_CI_CUDA_ARCHS  CMAKE_CUDA_ARCHITECTURES (default 90: one, to keep it short)
#   NQ_CI_HIP_ARCHS   AMD targets (default gfx90a;gfx940;gfx1030, what Debian's ROCm 5.2
#                     device libraries have)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
summary=()

nvcc=$(command -v nvcc || true)
if [ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ]; then nvcc=/usr/local/cuda/bin/nvcc; fi
if [ -n "$nvcc" ]; then
  archs=${NQ_CI_CUDA_ARCHS:-90}
  echo "== CUDA ($nvcc, sm_$archs): library, nq_gpu_tests, bench_cuda, bench_attention (build-ci-cuda)"
  start=$SECONDS
  cmake -S . -B build-ci-cuda -DCMAKE_BUILD_TYPE=Release -DNQ_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" \
    -DCMAKE_CUDA_ARCHITECTURES="$archs" -DNQ_BUILD_TESTS=ON -DNQ_BUILD_TOOLS=OFF >/dev/null
  cmake --build build-ci-cuda -j"$jobs" --target nexusquant nq_gpu_tests bench_cuda bench_attention >/dev/null
  build_s=$((SECONDS - start))
  echo "== nq_gpu_tests (every test skips without a CUDA device)"
  log=build-ci-cuda/nq_gpu_tests.log
  if ! build-ci-cuda/tests/gpu/nq_gpu_tests --gtest_brief=1 > "$log" 2>&1; then
    cat "$log"
    exit 1
  fi
  grep -m1 -o 'no CUDA device.*' "$log" || true
  tail -n 3 "$log"
  summary+=("CUDA sm_$archs: libnexusquant.so, nq_gpu_tests, bench_cuda, bench_attention built in ${build_s}s; nq_gpu_tests ran")
else
  echo "== CUDA: nvcc not found (PATH, /usr/local/cuda/bin): CUDA compile skipped"
  summary+=("CUDA: skipped (no nvcc)")
fi

hipcc=$(command -v hipcc || true)
if [ -n "$hipcc" ]; then
  archs=${NQ_CI_HIP_ARCHS:-gfx90a;gfx940;gfx1030}
  echo "== HIP ($hipcc, $archs): library (build-ci-hip)"
  start=$SECONDS
  cmake -S . -B build-ci-hip -DCMAKE_BUILD_TYPE=Release -DNQ_HIP=ON -DNQ_HIP_ARCHS="$archs" \
    -DNQ_BUILD_TESTS=OFF -DNQ_BUILD_TOOLS=OFF >/dev/null
  cmake --build build-ci-hip -j"$jobs" --target nexusquant >/dev/null
  build_s=$((SECONDS - start))
  # The offload bundle names each target it holds code for.
  for arch in ${archs//;/ }; do
    if ! grep -q -a "amdgcn-amd-amdhsa--$arch" build-ci-hip/libnexusquant.so; then
      echo "gpu_build.sh: build-ci-hip/libnexusquant.so has no code for $arch" >&2
      exit 1
    fi
  done
  summary+=("HIP $archs: libnexusquant.so built in ${build_s}s (not run: no AMD GPU)")
else
  echo "== HIP: hipcc not found (apt-get install hipcc): HIP compile skipped"
  summary+=("HIP: skipped (no hipcc)")
fi

for line in "${summary[@]}"; do echo "gpu_build.sh: $line"; done
