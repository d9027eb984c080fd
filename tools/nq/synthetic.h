// Deterministic synthetic K/V: the same seed gives the same floats on every platform
// whose libm rounds log/sqrt/cos/sin correctly to double (the values are then rounded
// to fp16/bf16/fp32 once). No std::*_distribution: their output differs between
// standard libraries.
//   gaussian  K and V i.i.d. N(0, 1).
//   outlier   like LLM keys: N(0, 1), plus 4 channels per (layer, head) of K scaled
//             x20, plus a heavy tail in K and V (1 element in 64 gets a Laplace
//             spike of scale 4).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace nqcli {

// splitmix64: one 64-bit state, full period, good enough for test data.
class SplitMix64 {
public:
    explicit SplitMix64(uint64_t seed) : s_(seed) {}
    uint64_t next();
    double uniform();  // in (0, 1), never 0 or 1
    double normal();   // Box-Muller; the second value of each pair is kept for the next call
    double laplace();  // unit-scale Laplace

private:
    uint64_t s_;
    bool have_spare_ = false;
    double spare_ = 0.0;
};

enum class SynthKind { Gaussian, Outlier };

SynthKind synth_kind_from_name(const std::string &name);
const char *synth_kind_name(SynthKind k);

struct SynthSpec {
    SynthKind kind = SynthKind::Gaussian;
    uint32_t layers = 1, heads = 8, tokens = 1024, head_dim = 128;
    uint64_t seed = 1;
};

// Fills k and v with [layers][heads][tokens][head_dim] floats. Each (tensor, layer,
// head) draws from its own stream, so the data do not depend on generation order.
void synth_generate(const SynthSpec &spec, std::vector<float> &k, std::vector<float> &v);

}  // namespace nqcli
