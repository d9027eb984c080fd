#!/usr/bin/env bash
# One call on a GPU machine: build the CUDA backend (sm_90), print the kernels' resource
# usage, run the GPU tests, the benchmark, and the GPU tests under compute-sanitizer
# memcheck. Logs go to $OUT (or ./gpu-run); a short summary is printed last.
#   bash bench/gpu/run_device.sh
# Optional: .devdeps/root holds the build's dependencies unpacked from packages (zstd,
# xxhash, googletest, pkgconf) for machines that lack them; .devdeps/src.tar.gz holds
# the sources to build instead of this tree (a committed snapshot).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-$root/gpu-run}
mkdir -p "$out"
src=$root
if [ -f "$root/.devdeps/src.tar.gz" ]; then
  src=/tmp/nq-src
  rm -rf "$src" && mkdir -p "$src" && tar xzf "$root/.devdeps/src.tar.gz" -C "$src"
fi
extra=()
deps=$root/.devdeps/root
if [ -d "$deps" ]; then
  export PKG_CONFIG_PATH=$deps/usr/lib/x86_64-linux-gnu/pkgconfig
  export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
  sed -i "s|^prefix=.*|prefix=$deps/usr|" "$PKG_CONFIG_PATH"/*.pc
  extra=(-DPKG_CONFIG_EXECUTABLE="$deps/usr/bin/pkgconf" -DGTest_DIR="$deps/usr/lib/x86_64-linux-gnu/cmake/GTest")
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
b=/tmp/nq-build
t0=$SECONDS
cmake -S "$src" -B $b -DNQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DNQ_BUILD_TOOLS=OFF -DNQ_GPU_SIM_TESTS=OFF \
  "${extra[@]}" > "$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
cmake --build $b -j16 --target nq_gpu_tests bench_cuda > "$out/build.log" 2>&1 || {
  grep -E "error|Error" "$out/build.log" | head -40; exit 1; }
echo "build: $((SECONDS - t0)) s"
# Registers, stack and shared memory of every kernel (sm_90).
for f in encode decode select backend; do
  cuobjdump -res-usage $b/CMakeFiles/nq_cuda_objects.dir/backends/cuda/$f.cu.o 2>/dev/null
done | grep -E "Function|REG" > "$out/resource-usage.txt"

# Opcode histogram of the head_dim 128 kernels (static counts of the disassembly).
if [ "${NQ_SASS:-0}" = 1 ]; then
  for f in encode decode; do
    cuobjdump -sass $b/CMakeFiles/nq_cuda_objects.dir/backends/cuda/$f.cu.o |
      awk -v k="${f}_kernelILi8ELi16E" '/Function : /{on = index($0, k) > 0} on' > "$out/$f-8-16.sass"
    echo "== $f<8,16>: $(grep -cE '^ +/\*[0-9a-f]{4}\*/' "$out/$f-8-16.sass") instructions"
    grep -oE '^ +/\*[0-9a-f]{4}\*/ +(@!?U?P[0-9T] +)?[A-Z][A-Z0-9_]+' "$out/$f-8-16.sass" | awk '{print $NF}' |
      sort | uniq -c | sort -rn | head -24 | tr '\n' ' '
    echo
  done > "$out/sass-histogram.txt"
fi
t0=$SECONDS
timeout 300 $b/tests/gpu/nq_gpu_tests > "$out/tests.log" 2>&1
tests_rc=$?
echo "tests: rc=$tests_rc, $((SECONDS - t0)) s"
t0=$SECONDS
timeout 240 $b/bench/gpu/bench_cuda --reps ${NQ_BENCH_REPS:-10} > "$out/bench.log" 2>&1
echo "bench: rc=$?, $((SECONDS - t0)) s"
# A/B: the same sources built again with extra CUDA flags, timed in this run.
if [ -n "${NQ_AB_FLAGS:-}" ]; then
  b2=/tmp/nq-build-b
  cmake -S "$src" -B $b2 -DNQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DNQ_BUILD_TOOLS=OFF -DNQ_GPU_SIM_TESTS=OFF \
    -DCMAKE_CUDA_FLAGS="$NQ_AB_FLAGS" "${extra[@]}" > "$out/configure-b.log" 2>&1 &&
    cmake --build $b2 -j16 --target bench_cuda > "$out/build-b.log" 2>&1 &&
    for sh in 1 3 1 3; do
      echo "A $sh: $($b/bench/gpu/bench_cuda --reps 10 --shape $sh | tail -1)"
      echo "B $sh: $($b2/bench/gpu/bench_cuda --reps 10 --shape $sh | tail -1)"
    done > "$out/ab.log" 2>&1
fi
if [ "${NQ_BENCH_TWICE:-0}" = 1 ]; then  # the same build timed again: the run-to-run spread
  timeout 240 $b/bench/gpu/bench_cuda --reps ${NQ_BENCH_REPS:-10} > "$out/bench2.log" 2>&1
  nvidia-smi -q -d CLOCK > "$out/clocks.txt" 2>&1
fi
t0=$SECONDS
timeout ${NQ_SAN_TIMEOUT:-200} compute-sanitizer --tool memcheck --error-exitcode 3 $b/tests/gpu/nq_gpu_tests \
  --gtest_filter='GpuEquivalenceExtra.*:GpuBatch.*:GpuArchive.*:GpuErrors.*:*lossless_f16_*:*max_bf16_paged*:*balanced_f32_strided*' \
  > "$out/memcheck.log" 2>&1
echo "memcheck: rc=$?, $((SECONDS - t0)) s"

if [ "${NQ_NCU:-0}" = 1 ]; then
  t0=$SECONDS
  timeout 200 ncu -k regex:'decode_kernel' -c 1 --section SpeedOfLight --section Occupancy \
    --section WarpStateStats --section ComputeWorkloadAnalysis --section InstructionStats --section LaunchStats \
    $b/bench/gpu/bench_cuda --shape 1 --reps 1 > "$out/ncu.txt" 2>&1
  echo "ncu: rc=$?, $((SECONDS - t0)) s"
fi

echo "==== tests"
grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[  FAILED  \]|Failure|differ|unwritten" "$out/tests.log" | head -40
tail -4 "$out/tests.log"
echo "==== memcheck"
grep -E "ERROR SUMMARY|Invalid|PASSED|FAILED" "$out/memcheck.log" | head -20
echo "==== resource usage"
grep -A1 -E "encode_kernel|decode_kernel" "$out/resource-usage.txt" | grep -E "REG" | head -14
if [ -f "$out/ncu.txt" ]; then
  echo "==== ncu"
  grep -E "^  [a-z_]+.*\(|encode_kernel|decode_kernel|Throughput|Achieved Occupancy|Issue Slots Busy|Executed Ipc A|Warp Cycles Per Issued|No Eligible|Registers Per|Theoretical Occ|Block Limit Reg" "$out/ncu.txt" | grep -v "^    ---" | head -40
fi
[ -f "$out/sass-histogram.txt" ] && { echo "==== sass"; cat "$out/sass-histogram.txt"; }
[ -f "$out/ab.log" ] && { echo "==== A/B (B: $NQ_AB_FLAGS)"; cut -c1-150 "$out/ab.log"; }
echo "==== bench"
tail -10 "$out/bench.log"
[ -f "$out/bench2.log" ] && { echo "==== bench, second time"; tail -7 "$out/bench2.log"; grep -A3 -E "^    Clocks$|Max Clocks" "$out/clocks.txt" | head -10; }
