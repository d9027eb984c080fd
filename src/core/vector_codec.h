// Quantisation of one head vector (head_dim floats) into a scale and packed groups,
// shared by every backend. The steps and their order are part of the format:
//   y = Hadamard(x)                              (hadamard.h)
//   ss = sum of y_i^2 by a pairwise tree          (stride-halving over the next power
//                                                  of two; missing terms are 0)
//   s = bf16(alpha[codec][bits] * sqrtf(ss / head_dim)); s = 0 if bf16 is subnormal
//   groups of 8 of y * (1/s) quantised            (lattice_codec.h)
// Decode: q * s -> inverse Hadamard.
#pragma once
#include <cmath>
#include <cstdint>
#include "half.h"
#include "hadamard.h"
#include "lattice_codec.h"
#include "nq_hd.h"

namespace nq {

constexpr uint32_t kMaxHeadDim = 512;
constexpr int kCodecE8 = 1;
constexpr int kCodecScalar = 2;

// Step of the codebook in units of the rms of the rotated vector, chosen by measuring
// SNR on Gaussian data (tools/tune_alpha.cpp; docs/DESIGN.md has the table).
NQ_HD float codec_alpha(int codec, int bits) {
    // index 0 unused
    const float e8[9] = {0.0f, 1.573f, 0.9818f, 0.581f, 0.3319f, 0.1862f, 0.1028f, 0.0564f, 0.0302f};
    const float sc[9] = {0.0f, 1.5985f, 0.9975f, 0.5811f, 0.3322f, 0.1864f, 0.1021f, 0.0565f, 0.0304f};
    return codec == kCodecE8 ? e8[bits] : sc[bits];
}

NQ_HD float tree_sum_squares(const float *y, uint32_t n) {
    float s[kMaxHeadDim];
    uint32_t p = 1;
    while (p < n) p <<= 1;
    for (uint32_t i = 0; i < p; ++i) s[i] = i < n ? y[i] * y[i] : 0.0f;
    for (uint32_t step = p >> 1; step >= 1; step >>= 1)
        for (uint32_t i = 0; i < step; ++i) s[i] = s[i] + s[i + step];
    return s[0];
}

// bf16 scale of a rotated vector; 0 when the vector is (nearly) zero. Returns false if
// the sum of squares is not finite (inf/nan input or values too large for fp32).
NQ_HD bool vector_scale(const float *y, uint32_t head_dim, int codec, int bits, uint16_t *scale_bf16) {
    float ss = tree_sum_squares(y, head_dim);
    if (!(ss <= 3.4028234e38f)) return false;  // inf or nan
    float rms = sqrtf(ss / (float)head_dim);
    uint16_t s = f32_to_bf16(codec_alpha(codec, bits) * rms);
    if ((s & 0x7f80u) == 0) s = 0;  // zero or subnormal: store the vector as zero
    *scale_bf16 = s;
    return true;
}

// Quantises the rotated vector y in place of nothing: writes head_dim*bits/8 bytes.
NQ_HD void encode_rotated(const float *y, uint32_t head_dim, int codec, int bits, uint16_t scale_bf16,
                          uint8_t *codes) {
    float s = bf16_to_f32(scale_bf16);
    float inv = s > 0.0f ? 1.0f / s : 0.0f;
    for (uint32_t g = 0; g < head_dim; g += 8) {
        float t[8];
        for (int i = 0; i < 8; ++i) t[i] = y[g + i] * inv;
        uint8_t *dst = codes + (g / 8) * (uint32_t)bits;
        if (codec == kCodecE8)
            e8_encode_group(t, bits, dst);
        else
            scalar_encode_group(t, bits, dst);
    }
}

// Decodes codes + scale into the rotated domain (before the inverse Hadamard).
NQ_HD void decode_rotated(const uint8_t *codes, uint32_t head_dim, int codec, int bits, uint16_t scale_bf16,
                          float *y) {
    float s = bf16_to_f32(scale_bf16);
    for (uint32_t g = 0; g < head_dim; g += 8) {
        float q[8];
        const uint8_t *src = codes + (g / 8) * (uint32_t)bits;
        if (codec == kCodecE8)
            e8_decode_group(src, bits, q);
        else
            scalar_decode_group(src, bits, q);
        for (int i = 0; i < 8; ++i) y[g + i] = q[i] * s;
    }
}

}  // namespace nq
