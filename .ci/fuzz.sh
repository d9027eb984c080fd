#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer, replays the checked-in seed corpus and regression inputs,
# then fuzzes each target for a bounded time. An input that crashes is copied to
# tests/fuzz/regressions/fuzz_<target>/, where CTest replays it in every build from
# then on: commit it with the fix.
#   NQ_FUZZ_SECONDS  seconds per target (default 60)
#   NQ_FUZZ_BUILD    build directory (default build-fuzz)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${NQ_FUZZ_SECONDS:-60}
build=${NQ_FUZZ_BUILD:-build-fuzz}
targets="deserialize layout roundtrip"

if ! command -v clang++ >/dev/null; then
  echo "fuzz.sh: clang++ not found (apt-get install clang libclang-rt-14-dev)" >&2
  exit 1
fi
cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DNQ_FUZZ=ON -DNQ_SANITIZE=address,undefined -DNQ_BUILD_TESTS=OFF -DNQ_BUILD_TOOLS=OFF >/dev/null
# Every target of the fuzz build, as a user's `cmake --build` after -DNQ_FUZZ=ON makes
# them (gen_fuzz_corpus included: it once failed to link there).
cmake --build "$build" -j"$(nproc)" >/dev/null

work=$root/fuzz-corpus-tmp  # the grown corpus, kept between runs, not checked in
mkdir -p "$work/artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=""
summary=""
for t in $targets; do
  bin=$build/tests/fuzz/fuzz_$t
  inputs=(tests/fuzz/corpus/fuzz_$t)
  [ -d tests/fuzz/regressions/fuzz_$t ] && inputs+=(tests/fuzz/regressions/fuzz_$t)
  echo "== fuzz_$t: replaying ${inputs[*]}"
  if ! "$bin" -runs=0 "${inputs[@]}" > "$work/replay_$t.log" 2>&1; then
    tail -40 "$work/replay_$t.log"
    failed="$failed fuzz_$t(replay)"
    continue
  fi
  echo "== fuzz_$t: fuzzing for ${seconds}s"
  mkdir -p "$work/fuzz_$t"
  before=$(ls "$work/artifacts" | wc -l)
  set +e
  "$bin" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/fuzz_$t-" "$work/fuzz_$t" "tests/fuzz/corpus/fuzz_$t" > "$work/fuzz_$t.log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/fuzz_$t.log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/fuzz_$t.log")
  cov=$(grep -o 'cov: [0-9]*' "$work/fuzz_$t.log" | tail -1)
  summary="$summary
  fuzz_$t: ${runs:-?} runs, ${rate:-?} execs/s, $cov, exit $rc"
  if [ "$rc" != 0 ] || [ "$(ls "$work/artifacts" | wc -l)" != "$before" ]; then
    grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse)' "$work/fuzz_$t.log" | tail -60
    mkdir -p "tests/fuzz/regressions/fuzz_$t"
    for a in $(ls -t "$work/artifacts" | grep "^fuzz_$t-"); do
      cp "$work/artifacts/$a" "tests/fuzz/regressions/fuzz_$t/${a#fuzz_$t-}"
      echo "fuzz.sh: saved tests/fuzz/regressions/fuzz_$t/${a#fuzz_$t-} (commit it with the fix)"
      rm "$work/artifacts/$a"
    done
    failed="$failed fuzz_$t"
  fi
done
echo "fuzz.sh summary:$summary"
if [ -n "$failed" ]; then
  echo "fuzz.sh: FAILED:$failed" >&2
  exit 1
fi
echo "fuzz.sh: all targets passed"
