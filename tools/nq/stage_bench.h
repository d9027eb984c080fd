// Timings of single pipeline stages on the input's head vectors, through the
// arithmetic the library shares between backends (src/core). Each number is the
// median over runs; the fp16-equivalent bytes are head_dim * 2 per vector.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "kv_input.h"
#include "pipeline.h"

namespace nqcli {

struct Timing {
    std::vector<double> runs;  // seconds per run
    double median_s = 0.0;
};

// Runs fn at least `repeat` times and until `min_seconds` have passed; setup (if
// given) runs untimed before each run.
Timing measure(uint32_t repeat, double min_seconds, const std::function<void()> &fn,
               const std::function<void()> &setup = nullptr);

struct StageResult {
    std::string name;
    double seconds = 0.0;        // median per run
    double gbps = 0.0;           // fp16-equivalent bytes per second
    double ns_per_vector = 0.0;
    uint64_t vectors = 0;
};

// Stages on the keys of layer 0: rope_remove (tables + rotation), hadamard_forward,
// quantise (scale + groups at bits with codec), dequantise, hadamard_inverse.
std::vector<StageResult> stage_bench(const KvData &kv, const PipelineOptions &opt, uint32_t bits, uint32_t repeat,
                                     double min_seconds);

}  // namespace nqcli
