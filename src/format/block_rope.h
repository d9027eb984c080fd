// The RoPE spec a block header records: the one mapping between the header's RoPE
// fields and a RopeSpec, used to write a planned header from the context's spec, to
// rebuild the spec from a block, and to compare the two.
#pragma once
#include <cstdint>

#include "../core/format.h"
#include "../core/rope.h"

namespace nq {

inline void set_header_rope(BlockHeader &h, const RopeSpec &r) {
    h.rope_pairing = r.pairing;
    h.rope_scaling = r.scaling;
    h.rotary_dims = (uint16_t)r.rotary_dims;
    h.rope_original_max_position = r.original_max_position;
    h.theta = r.theta;
    h.factor = r.factor;
    h.low_freq_factor = r.low_freq_factor;
    h.high_freq_factor = r.high_freq_factor;
    h.beta_fast = r.beta_fast;
    h.beta_slow = r.beta_slow;
    h.attention_factor = r.attention_factor;
}

inline RopeSpec header_rope(const BlockHeader &h) {
    RopeSpec r;
    r.pairing = h.rope_pairing;
    r.scaling = h.rope_scaling;
    r.rotary_dims = h.rotary_dims;
    r.original_max_position = h.rope_original_max_position;
    r.theta = h.theta;
    r.factor = h.factor;
    r.low_freq_factor = h.low_freq_factor;
    r.high_freq_factor = h.high_freq_factor;
    r.beta_fast = h.beta_fast;
    r.beta_slow = h.beta_slow;
    r.attention_factor = h.attention_factor;
    return r;
}

// Field by field (doubles compared exactly: a spec is copied, never recomputed).
inline bool same_rope(const RopeSpec &a, const RopeSpec &b) {
    return a.pairing == b.pairing && a.scaling == b.scaling && a.rotary_dims == b.rotary_dims &&
           a.original_max_position == b.original_max_position && a.theta == b.theta && a.factor == b.factor &&
           a.low_freq_factor == b.low_freq_factor && a.high_freq_factor == b.high_freq_factor &&
           a.beta_fast == b.beta_fast && a.beta_slow == b.beta_slow && a.attention_factor == b.attention_factor;
}

}  // namespace nq
