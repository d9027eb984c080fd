// RoPE tables and rotations.
//
// Frequencies, scaling and angles are computed in float64 and rounded to float once;
// the rotation itself is plain float arithmetic (two products, one add, no FMA), so
// every backend that takes the same tables produces the same bits.
#pragma once
#include <cstdint>
#include "nq_hd.h"

namespace nq {

enum RopeScaling : uint8_t { kRopeNone = 0, kRopeLinear = 1, kRopeDynamicNtk = 2, kRopeLlama3 = 3, kRopeYarn = 4 };
enum RopePairing : uint8_t { kPairSplitHalf = 1, kPairInterleaved = 2 };

struct RopeSpec {
    uint8_t pairing = kPairSplitHalf;
    uint8_t scaling = kRopeNone;
    uint32_t rotary_dims = 0;  // even, <= head_dim
    uint32_t original_max_position = 0;
    double theta = 10000.0;
    double factor = 1.0;
    double low_freq_factor = 1.0;
    double high_freq_factor = 4.0;
    double beta_fast = 32.0;
    double beta_slow = 1.0;
    double attention_factor = 0.0;  // 0 = derived (yarn), else as given
};

// Inverse frequencies (rotary_dims / 2 of them) for keys rotated while the sequence had
// seq_len tokens (only dynamic NTK looks at it), and the factor that multiplies cos and
// sin (YaRN's attention factor, else 1).
void rope_inv_freq(const RopeSpec &spec, uint32_t seq_len, double *inv_freq, double *mscale);

// cos/sin of one position for every frequency, rounded to float: forward tables (with
// mscale) and inverse tables (divided by mscale).
void rope_tables(const double *inv_freq, uint32_t num_freq, double mscale, int64_t position, float *cos_fwd,
                 float *sin_fwd, float *cos_inv, float *sin_inv);

// Index of the two dims of pair i.
NQ_HD void rope_pair(uint8_t pairing, uint32_t rotary_dims, uint32_t i, uint32_t *a, uint32_t *b) {
    if (pairing == kPairInterleaved) {
        *a = 2 * i;
        *b = 2 * i + 1;
    } else {
        *a = i;
        *b = i + rotary_dims / 2;
    }
}

// x <- R(angle) x on the rotary dims (what the model did to the keys).
NQ_HD void rope_rotate(float *x, uint8_t pairing, uint32_t rotary_dims, const float *c, const float *s) {
    for (uint32_t i = 0; i < rotary_dims / 2; ++i) {
        uint32_t ia, ib;
        rope_pair(pairing, rotary_dims, i, &ia, &ib);
        float a = x[ia], b = x[ib];
        float ac = a * c[i], bs = b * s[i], bc = b * c[i], as = a * s[i];
        x[ia] = ac - bs;
        x[ib] = bc + as;
    }
}

// x <- R(-angle) x with the inverse tables (removes the model's rotation).
NQ_HD void rope_unrotate(float *x, uint8_t pairing, uint32_t rotary_dims, const float *c, const float *s) {
    for (uint32_t i = 0; i < rotary_dims / 2; ++i) {
        uint32_t ia, ib;
        rope_pair(pairing, rotary_dims, i, &ia, &ib);
        float a = x[ia], b = x[ib];
        float ac = a * c[i], bs = b * s[i], bc = b * c[i], as = a * s[i];
        x[ia] = ac + bs;
        x[ib] = bc - as;
    }
}

}  // namespace nq
