#!/usr/bin/env bash
# One call on a GPU machine for attention over resident blocks: build (sm_90), the
# kernels' resource usage, the attention tests, the whole GPU test suite (byte
# identity of the other kernels), compute-sanitizer memcheck on the attention tests,
# bench_attention and torch SDPA on the same shapes. Logs go to $OUT (or ./gpu-run).
#   bash bench/gpu/run_attention.sh
# .devdeps/root (optional) holds zstd/xxhash/googletest/pkgconf unpacked for machines
# that lack them (see run_device.sh).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-$root/gpu-run}
mkdir -p "$out"
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
cmake -S "$root" -B $b -DCMAKE_BUILD_TYPE=Release -DNQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DNQ_BUILD_TOOLS=OFF \
  -DNQ_GPU_SIM_TESTS=OFF "${extra[@]}" > "$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
cmake --build $b -j16 --target nq_gpu_tests bench_attention > "$out/build.log" 2>&1 || {
  grep -E "error|Error" "$out/build.log" | head -40; exit 1; }
echo "build: $((SECONDS - t0)) s"
cuobjdump -res-usage $b/CMakeFiles/nq_cuda_objects.dir/backends/cuda/attention.cu.o 2>/dev/null |
  grep -E "Function|REG" > "$out/resource-usage.txt"
t0=$SECONDS
timeout 200 $b/tests/gpu/nq_gpu_tests --gtest_filter='GpuAttention.*' > "$out/tests-attention.log" 2>&1
echo "attention tests: rc=$?, $((SECONDS - t0)) s"
t0=$SECONDS
timeout 240 $b/bench/gpu/bench_attention --reps ${NQ_BENCH_REPS:-50} > "$out/attention.jsonl" 2> "$out/bench.err"
echo "bench: rc=$?, $((SECONDS - t0)) s"
if [ "${NQ_BENCH_AB:-0}" = 1 ]; then  # the same shapes on the CUDA-core kernel, same run
  NQ_ATTENTION_MMA=0 timeout 120 $b/bench/gpu/bench_attention --reps ${NQ_BENCH_REPS:-50} --check 0 \
    > "$out/attention-cudacore.jsonl" 2>> "$out/bench.err"
fi
if [ -n "${NQ_BENCH_SPLITS:-}" ]; then  # the same shapes with a fixed split count
  timeout 120 $b/bench/gpu/bench_attention --reps ${NQ_BENCH_REPS:-50} --check 0 --splits $NQ_BENCH_SPLITS \
    > "$out/attention-splits.jsonl" 2>> "$out/bench.err"
fi
t0=$SECONDS
PYTHONUNBUFFERED=1 timeout 200 python3 "$root/bench/gpu/bench_sdpa.py" "$out/attention.jsonl" > "$out/sdpa.txt" \
  2> "$out/sdpa.err"
echo "sdpa: rc=$?, $((SECONDS - t0)) s"
if [ "${NQ_ALL_TESTS:-1}" = 1 ]; then
  t0=$SECONDS
  timeout 300 $b/tests/gpu/nq_gpu_tests --gtest_filter='-GpuAttention.*' > "$out/tests-all.log" 2>&1
  echo "other GPU tests: rc=$?, $((SECONDS - t0)) s"
fi
t0=$SECONDS
timeout ${NQ_SAN_TIMEOUT:-200} compute-sanitizer --tool memcheck --error-exitcode 3 $b/tests/gpu/nq_gpu_tests \
  --gtest_filter='GpuAttention.*' > "$out/memcheck.log" 2>&1
echo "memcheck: rc=$?, $((SECONDS - t0)) s"

if [ "${NQ_NCU:-0}" = 1 ]; then  # hardware counters of one launch (128K tokens, batch 1, RoPE kept)
  t0=$SECONDS
  timeout 200 ncu --clock-control none -k regex:attention_kernel -c 1 --section SpeedOfLight --section Occupancy \
    --section WarpStateStats --section InstructionStats --section LaunchStats --section SchedulerStats \
    --section MemoryWorkloadAnalysis $b/bench/gpu/bench_attention --shape 0 --reps 1 --check 0 > "$out/ncu.txt" 2>&1
  echo "ncu: rc=$?, $((SECONDS - t0)) s"
fi

echo "==== attention tests"
grep -E "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure|error" "$out/tests-attention.log" | head -30
tail -3 "$out/tests-attention.log"
[ -f "$out/tests-all.log" ] && { echo "==== other GPU tests"; grep -E "^\[  FAILED  \]" "$out/tests-all.log" | head; tail -2 "$out/tests-all.log"; }
echo "==== memcheck"
grep -E "ERROR SUMMARY|Invalid|PASSED|FAILED" "$out/memcheck.log" | head -10
echo "==== resource usage (attention)"
paste - - < "$out/resource-usage.txt" | sed -E 's/.*attention_kernelILi([0-9]+)ELi([0-9]+)ELi([0-9]+)E.*(REG:[0-9]+ STACK:[0-9]+ SHARED:[0-9]+ LOCAL:[0-9]+).*/NDL \1 QC \2 FD \3: \4/' | head -20
if [ -f "$out/ncu.txt" ]; then
  echo "==== ncu"
  grep -E "Duration|Throughput|Achieved Occupancy|Theoretical Occ|Issue Slots Busy|Executed Ipc A|Warp Cycles Per Issued|No Eligible|Registers Per|Block Limit|Stall|L1/TEX Hit|L2 Hit" "$out/ncu.txt" | head -40
fi
echo "==== bench"
cat "$out/bench.err" | tail -3
cat "$out/sdpa.txt"
[ -f "$out/attention-cudacore.jsonl" ] && { echo "== CUDA-core kernel (NQ_ATTENTION_MMA=0)"; sed -E 's/.*"tokens": ([0-9]+), "batch": ([0-9]+).*"rope": "([a-z]+)".*"splits": ([0-9]+), "fused_us": ([0-9.]+).*/\1 x\2 \3 splits \4: \5 us/' "$out/attention-cudacore.jsonl"; }
[ -f "$out/attention-splits.jsonl" ] && { echo "== splits $NQ_BENCH_SPLITS"; cut -c1-60,230-330 "$out/attention-splits.jsonl"; }
tail -5 "$out/sdpa.err"
