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

}  // namespace nq
