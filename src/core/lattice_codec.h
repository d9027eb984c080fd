// The two quantisers of 8-float groups, shared by every backend.
//
// E8 box codebook with B bits per dimension (B = 1..8): the points are q = p + 1/4
// where p is a point of E8 = D8 u (D8 + 1/2) whose coordinates lie in a box:
//   coset 0: p_i integer,           k_i = p_i        in [-2^(B-1), 2^(B-1) - 1]
//   coset 1: p_i = k_i + 1/2,       k_i              in [-2^(B-1), 2^(B-1) - 1]
// and in both cosets sum(k_i) is even (that is the D8 condition). The 1/4 shift makes
// the box symmetric about 0. A group is stored as the coset bit, u_0..u_6 (B bits
// each, u_i = k_i + 2^(B-1)) and u_7 >> 1 (B - 1 bits): the parity of sum(u) fixes the
// low bit of u_7, so a group takes exactly 8B bits.
//
// Scalar codebook with B bits: each coordinate independently takes one of 2^B levels
// (u - (2^B - 1)/2), u in [0, 2^B); 8 coordinates of B bits.
//
// Both pack a group little-endian, least significant bit first, into exactly B bytes.
// Every comparison that picks a point uses plain IEEE float operations in a fixed
// order (the library is built without FMA contraction), so all backends agree.
#pragma once
#include <cstdint>
#include "nq_hd.h"

namespace nq {

// floor(x + 1/2) without the rounding error of computing x + 1/2 and without depending
// on the FPU rounding mode: ties go up.
NQ_HD float round_half_up(float x) {
    float f = floorf(x);
    return (x - f >= 0.5f) ? f + 1.0f : f;
}

NQ_HD float clampf_(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

// Nearest point of one coset (shift = 0 or 0.5) of the boxed, shifted E8 codebook to t.
// Writes k[8] and returns the squared error.
NQ_HD float e8_coset_nearest(const float *t, float shift, float lo, float hi, float *k) {
    float v[8], err[8];
    int parity = 0;
    for (int i = 0; i < 8; ++i) {
        v[i] = (t[i] - 0.25f) - shift;
        float r = clampf_(round_half_up(v[i]), lo, hi);
        k[i] = r;
        float d = r - v[i];
        err[i] = d * d;
        parity ^= (int)r & 1;
    }
    if (parity) {
        // Flip the parity with the cheapest single +-1 move that stays in the box: one
        // move is always optimal because every move costs at least as much as the best
        // single one.
        int best = 0;
        float best_delta = 0.0f, best_alt = 0.0f;
        for (int i = 0; i < 8; ++i) {
            float dir = (v[i] > k[i]) ? 1.0f : -1.0f;
            float alt = k[i] + dir;
            if (alt > hi || alt < lo) alt = k[i] - dir;
            float d = alt - v[i];
            float delta = d * d - err[i];
            if (i == 0 || delta < best_delta) {
                best = i;
                best_delta = delta;
                best_alt = alt;
            }
        }
        float d = best_alt - v[best];
        k[best] = best_alt;
        err[best] = d * d;
    }
    float total = 0.0f;
    for (int i = 0; i < 8; ++i) total += err[i];
    return total;
}

// Quantises t[8] (already divided by the scale) to the E8 box codebook with B bits and
// packs it into `out` (B bytes).
NQ_HD void e8_encode_group(const float *t, int bits, uint8_t *out) {
    const float lo = -(float)(1 << (bits - 1));
    const float hi = (float)((1 << (bits - 1)) - 1);
    float k0[8], k1[8];
    float e0 = e8_coset_nearest(t, 0.0f, lo, hi, k0);
    float e1 = e8_coset_nearest(t, 0.5f, lo, hi, k1);
    const float *k = (e1 < e0) ? k1 : k0;
    uint64_t acc = (e1 < e0) ? 1u : 0u;
    int pos = 1;
    const int half = 1 << (bits - 1);
    for (int i = 0; i < 7; ++i) {
        uint64_t u = (uint64_t)((int)k[i] + half);
        acc |= u << pos;
        pos += bits;
    }
    uint64_t u7 = (uint64_t)((int)k[7] + half);
    acc |= (u7 >> 1) << pos;
    for (int b = 0; b < bits; ++b) out[b] = (uint8_t)(acc >> (8 * b));
}

// Unpacks one E8 group into its codebook point (without the scale).
NQ_HD void e8_decode_group(const uint8_t *in, int bits, float *q) {
    uint64_t acc = 0;
    for (int b = 0; b < bits; ++b) acc |= (uint64_t)in[b] << (8 * b);
    const uint64_t mask = (1u << bits) - 1u;
    const int half = 1 << (bits - 1);
    const float shift = (acc & 1u) ? 0.75f : 0.25f;  // coset offset + the 1/4 box shift
    int pos = 1;
    uint32_t par = 0;
    for (int i = 0; i < 7; ++i) {
        uint32_t u = (uint32_t)((acc >> pos) & mask);
        par ^= u & 1u;
        q[i] = (float)((int)u - half) + shift;
        pos += bits;
    }
    uint32_t u7 = (uint32_t)(((acc >> pos) & (mask >> 1)) << 1) | par;
    q[7] = (float)((int)u7 - half) + shift;
}

NQ_HD void scalar_encode_group(const float *t, int bits, uint8_t *out) {
    const float top = (float)((1 << bits) - 1);
    const float mid = top * 0.5f;
    uint64_t acc = 0;
    for (int i = 0; i < 8; ++i) {
        float u = clampf_(round_half_up(t[i] + mid), 0.0f, top);
        acc |= (uint64_t)(uint32_t)u << (i * bits);
    }
    for (int b = 0; b < bits; ++b) out[b] = (uint8_t)(acc >> (8 * b));
}

NQ_HD void scalar_decode_group(const uint8_t *in, int bits, float *q) {
    uint64_t acc = 0;
    for (int b = 0; b < bits; ++b) acc |= (uint64_t)in[b] << (8 * b);
    const uint64_t mask = (1u << bits) - 1u;
    const float mid = (float)((1 << bits) - 1) * 0.5f;
    for (int i = 0; i < 8; ++i) q[i] = (float)(uint32_t)((acc >> (i * bits)) & mask) - mid;
}

}  // namespace nq
