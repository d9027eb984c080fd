// Walsh-Hadamard rotation of head vectors, shared by every backend.
//
// head_dim is tiled by blocks of n = the largest power of two dividing it (at most
// 512): 64, 128, 256 are one block; 80 is five blocks of 16, 96 three of 32. The
// forward transform multiplies by a fixed +-1 sign per dimension, then applies the
// unnormalised transform (radix-2 butterflies, stages h = 1, 2, 4, ... in that order,
// which fixes every rounding). Its inverse is the same transform divided by n (exact:
// n is a power of two), then the signs. The 1/sqrt(n) normalisation is absorbed by the
// per-vector scale, so it never costs a rounding.
#pragma once
#include <cstdint>
#include "nq_hd.h"

namespace nq {

NQ_HD uint32_t hadamard_block(uint32_t head_dim) {
    uint32_t n = head_dim & (~head_dim + 1u);  // lowest set bit
    return n > 512u ? 512u : n;
}

// The sign of dimension d: bit d of a fixed 512-bit pattern drawn from splitmix64 with
// seed 0x6e7175616e74 ("nquant"). See docs/FORMAT.md.
NQ_HD bool hadamard_sign_negative(uint32_t d) {
    uint64_t z = 0x6e7175616e74ull + 0x9e3779b97f4a7c15ull * (uint64_t)((d >> 6) + 1u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (z >> (d & 63u)) & 1u;
}

NQ_HD void fwht_unnormalised(float *x, uint32_t n) {
    for (uint32_t h = 1; h < n; h <<= 1) {
        for (uint32_t i = 0; i < n; i += 2 * h) {
            for (uint32_t j = i; j < i + h; ++j) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
    }
}

NQ_HD void hadamard_forward(float *x, uint32_t head_dim) {
    const uint32_t n = hadamard_block(head_dim);
    for (uint32_t d = 0; d < head_dim; ++d)
        if (hadamard_sign_negative(d)) x[d] = -x[d];
    for (uint32_t b = 0; b < head_dim; b += n) fwht_unnormalised(x + b, n);
}

NQ_HD void hadamard_inverse(float *x, uint32_t head_dim) {
    const uint32_t n = hadamard_block(head_dim);
    const float inv_n = 1.0f / (float)n;  // exact: n is a power of two
    for (uint32_t b = 0; b < head_dim; b += n) fwht_unnormalised(x + b, n);
    for (uint32_t d = 0; d < head_dim; ++d) {
        float v = x[d] * inv_n;
        x[d] = hadamard_sign_negative(d) ? -v : v;
    }
}

}  // namespace nq
