// exp for x <= 0 in float with a fixed sequence of operations (no library call, no
// FMA), so every backend computes the same attention probabilities bit for bit.
#pragma once
#include "half.h"
#include "nq_hd.h"

namespace nq {

NQ_HD float nq_expf_nonpos(float x) {
    if (!(x > -87.0f)) return 0.0f;  // also maps nan to 0
    if (x > 0.0f) x = 0.0f;
    const float log2e = 1.44269504f;
    const float ln2_hi = 0.693145752f;  // exactly representable high part of ln 2
    const float ln2_lo = 1.42860677e-6f;
    float n = floorf(x * log2e + 0.5f);
    float r = x - n * ln2_hi;
    r = r - n * ln2_lo;
    // Taylor terms to r^6 on |r| <= ln2/2: relative error below 2e-7.
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int e = (int)n + 127;  // n in [-126, 0]
    if (e <= 0) return 0.0f;
    return p * bits_f32((uint32_t)e << 23);
}

}  // namespace nq
