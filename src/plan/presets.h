// Preset table and the target-ratio planner.
#pragma once
#include <cstdint>

#include "nexusquant.h"

namespace nq {

struct PresetValues {
    uint32_t k_bits, v_bits;
    float evict_fraction;
    uint32_t sink_tokens, recent_window, fp16_sinks, fp16_window;
};

// Values of a quality preset for vectors of head_dim (S/M/L/XL are planned from their
// target ratio, so they depend on head_dim).
PresetValues preset_values(nq_preset p, uint32_t head_dim);

// Bits and eviction that reach `ratio` (fp16 bytes / block bytes) on long contexts.
PresetValues plan_for_ratio(float ratio, uint32_t head_dim);

// Whether (and how) blocks choose their bits from their data (src/plan/bit_choice.h):
// only when the caller set neither k_bits nor v_bits. A quality preset (LOSSLESS..MAX)
// is a distortion target with one bit of room above its nominal pair, within its ratio
// floor. A target ratio, S/M/L/XL and CUSTOM keep their planned bits.
struct BitPolicy {
    bool adaptive;
    uint32_t extra;
    float target;
    float floor;  // no block goes below this ratio by spending bits (0: none)
};
BitPolicy bit_policy(const nq_config &c);

}  // namespace nq
