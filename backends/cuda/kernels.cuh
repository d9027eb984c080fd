// Device helpers shared by the compress and decode kernels.
//
// A head vector of D floats (D a multiple of 8, up to 512) is held by a group of G
// lanes, E consecutive floats per lane (E = 8, or 16 when D > 256), G * E = P, the
// power of two >= D; lanes past D hold zeros. Every step reproduces the scalar
// reference's operation order (src/core): Hadamard stages h = 1, 2, 4, ... (the small
// ones inside a lane, the others between lanes), the stride-halving tree of the sum of
// squares, RoPE as two products and one add. Exchanges stay inside the group.
#pragma once
#include "../../src/core/half.h"
#include "../../src/core/hadamard.h"
#include "../../src/core/lattice_codec.h"
#include "../../src/core/vector_codec.h"
#include "gpu_desc.h"
#include "gpu_runtime.h"

#if defined(NQ_GPU_SIM)
#define NQ_GRID_CONSTANT
#elif defined(__HIPCC__) || defined(NQ_HIP)
#define NQ_GRID_CONSTANT
#else
#define NQ_GRID_CONSTANT __grid_constant__
#endif

namespace nq {
namespace gpu {

// dtype codes as in nq_dtype
constexpr uint32_t kF16 = 1, kBF16 = 2, kF32 = 3;

__device__ __forceinline__ uint4 ld16(const void *p) {
#if defined(NQ_GPU_SIM)
    uint4 v;
    std::memcpy(&v, p, 16);
    return v;
#else
    return *reinterpret_cast<const uint4 *>(p);
#endif
}
__device__ __forceinline__ void st16(void *p, uint4 v) {
#if defined(NQ_GPU_SIM)
    std::memcpy(p, &v, 16);
#else
    *reinterpret_cast<uint4 *>(p) = v;
#endif
}
__device__ __forceinline__ bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

// fp16 -> fp32 is exact, so the conversion instruction gives the reference's bits for
// every non-NaN input (NaN inputs make the reference reject the row anyway); bf16 is a
// shift. fp32 -> fp16/bf16 round to nearest even in hardware as the reference does;
// NaN (payload rules differ) takes the reference's integer path.
__device__ __forceinline__ float half_to_float(uint16_t h, uint32_t dtype) {
#if defined(NQ_GPU_SIM)
    return dtype == kBF16 ? bf16_to_f32(h) : f16_to_f32(h);
#elif defined(__HIPCC__) || defined(NQ_HIP)
    return dtype == kBF16 ? bf16_to_f32(h) : f16_to_f32(h);
#else
    if (dtype == kBF16) return bf16_to_f32(h);
    if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) return f16_to_f32(h);  // NaN: keep the payload
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}
__device__ __forceinline__ uint16_t float_to_half(float f, uint32_t dtype) {
#if defined(NQ_GPU_SIM) || defined(__HIPCC__) || defined(NQ_HIP)
    return dtype == kBF16 ? f32_to_bf16(f) : f32_to_f16(f);
#else
    if (f != f) return dtype == kBF16 ? f32_to_bf16(f) : f32_to_f16(f);
    uint16_t h;
    if (dtype == kBF16)
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    else
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}

// Loads x[e] = element d0 + e (e < E) of a vector at base + off; zeros past D.
template <int E>
__device__ __forceinline__ void load_lane(const void *base, uint32_t dtype, int64_t off, int64_t sd, uint32_t d0,
                                          uint32_t D, float (&x)[E]) {
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = 0.0f;
    if (d0 >= D) return;
    const uint32_t n = D - d0 < (uint32_t)E ? D - d0 : (uint32_t)E;  // a multiple of 8
    if (dtype == kF32) {
        const float *p = static_cast<const float *>(base) + off + (int64_t)d0 * sd;
        if (sd == 1 && aligned16(p)) {
#pragma unroll
            for (int c = 0; c < E / 4; ++c) {
                if ((uint32_t)c * 4 < n) {
                    uint4 u = ld16(p + 4 * c);
                    x[4 * c + 0] = __uint_as_float(u.x);
                    x[4 * c + 1] = __uint_as_float(u.y);
                    x[4 * c + 2] = __uint_as_float(u.z);
                    x[4 * c + 3] = __uint_as_float(u.w);
                }
            }
        } else {
#pragma unroll
            for (int e = 0; e < E; ++e)
                if ((uint32_t)e < n) x[e] = p[(int64_t)e * sd];
        }
        return;
    }
    const uint16_t *p = static_cast<const uint16_t *>(base) + off + (int64_t)d0 * sd;
    if (sd == 1 && aligned16(p)) {
#pragma unroll
        for (int c = 0; c < E / 8; ++c) {
            if ((uint32_t)c * 8 < n) {
                uint4 u = ld16(p + 8 * c);
                const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    x[8 * c + 2 * i] = half_to_float((uint16_t)(w[i] & 0xffffu), dtype);
                    x[8 * c + 2 * i + 1] = half_to_float((uint16_t)(w[i] >> 16), dtype);
                }
            }
        }
    } else {
#pragma unroll
        for (int e = 0; e < E; ++e)
            if ((uint32_t)e < n) x[e] = half_to_float(p[(int64_t)e * sd], dtype);
    }
}

// Two floats rounded to fp16 or bf16 in one instruction, low element first; NaN takes
// the reference's integer path.
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi, uint32_t dtype) {
#if defined(NQ_GPU_SIM) || defined(__HIPCC__) || defined(NQ_HIP)
    return (uint32_t)float_to_half(lo, dtype) | ((uint32_t)float_to_half(hi, dtype) << 16);
#else
    if (lo != lo || hi != hi) return (uint32_t)float_to_half(lo, dtype) | ((uint32_t)float_to_half(hi, dtype) << 16);
    uint32_t u;
    if (dtype == kBF16)
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(u) : "f"(hi), "f"(lo));
    else
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(u) : "f"(hi), "f"(lo));
    return u;
#endif
}

// Stores x[e] into element d0 + e of a vector at base + off (only elements < D).
template <int E>
__device__ __forceinline__ void store_lane(void *base, uint32_t dtype, int64_t off, int64_t sd, uint32_t d0, uint32_t D,
                                           const float (&x)[E]) {
    if (d0 >= D) return;
    const uint32_t n = D - d0 < (uint32_t)E ? D - d0 : (uint32_t)E;
    if (dtype == kF32) {
        float *p = static_cast<float *>(base) + off + (int64_t)d0 * sd;
        if (sd == 1 && aligned16(p)) {
#pragma unroll
            for (int c = 0; c < E / 4; ++c)
                if ((uint32_t)c * 4 < n) {
                    uint4 u;
                    u.x = __float_as_uint(x[4 * c + 0]);
                    u.y = __float_as_uint(x[4 * c + 1]);
                    u.z = __float_as_uint(x[4 * c + 2]);
                    u.w = __float_as_uint(x[4 * c + 3]);
                    st16(p + 4 * c, u);
                }
        } else {
#pragma unroll
            for (int e = 0; e < E; ++e)
                if ((uint32_t)e < n) p[(int64_t)e * sd] = x[e];
        }
        return;
    }
    uint16_t *p = static_cast<uint16_t *>(base) + off + (int64_t)d0 * sd;
    if (sd == 1 && aligned16(p)) {
#pragma unroll
        for (int c = 0; c < E / 8; ++c)
            if ((uint32_t)c * 8 < n) {
                uint32_t w[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) w[i] = pack_half2(x[8 * c + 2 * i], x[8 * c + 2 * i + 1], dtype);
                uint4 u;
                u.x = w[0];
                u.y = w[1];
                u.z = w[2];
                u.w = w[3];
                st16(p + 8 * c, u);
            }
    } else {
#pragma unroll
        for (int e = 0; e < E; ++e)
            if ((uint32_t)e < n) p[(int64_t)e * sd] = float_to_half(x[e], dtype);
    }
}

// Bit e set when dimension d0 + e takes a negative Hadamard sign.
template <int E> __device__ __forceinline__ uint32_t sign_bits(uint32_t d0) {
    uint32_t m = 0;
#pragma unroll
    for (int e = 0; e < E; ++e)
        if (hadamard_sign_negative(d0 + (uint32_t)e)) m |= 1u << e;
    return m;
}

// Unnormalised Walsh-Hadamard over blocks of n (a power of two >= 8) across the group.
template <int E>
__device__ __forceinline__ void fwht_lanes(float (&x)[E], uint32_t n, uint32_t gl, unsigned mask) {
#pragma unroll
    for (int h = 1; h < E; h <<= 1) {
        if ((uint32_t)h < n) {
#pragma unroll
            for (int i = 0; i < E; i += 2 * h)
#pragma unroll
                for (int j = i; j < i + h; ++j) {
                    float a = x[j], b = x[j + h];
                    x[j] = a + b;
                    x[j + h] = a - b;
                }
        }
    }
    for (uint32_t h = E; h < n; h <<= 1) {
        const uint32_t lm = h / E;
#if defined(NQ_FWHT_SIGNFLIP)
        // lower lane: x + p; upper lane: p - x, computed as p + (-x) (the same IEEE result)
        const uint32_t flip = (gl & lm) ? 0x80000000u : 0u;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            float p = __shfl_xor_sync(mask, x[e], (int)lm);
            x[e] = __uint_as_float(__float_as_uint(x[e]) ^ flip) + p;
        }
#else
        const bool upper = (gl & lm) != 0;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            float p = __shfl_xor_sync(mask, x[e], (int)lm);
            x[e] = upper ? p - x[e] : x[e] + p;
        }
#endif
    }
}

// Sum of squares by the stride-halving tree over P = G * E (tree_sum_squares); every
// lane of the group gets the result.
template <int E, int G>
__device__ __forceinline__ float sum_squares_lanes(const float (&x)[E], uint32_t gl, unsigned mask) {
    float s[E];
#pragma unroll
    for (int e = 0; e < E; ++e) s[e] = x[e] * x[e];
#pragma unroll
    for (int lm = G / 2; lm >= 1; lm >>= 1) {
#pragma unroll
        for (int e = 0; e < E; ++e) {
            float p = __shfl_xor_sync(mask, s[e], lm);
            s[e] = s[e] + p;
        }
    }
#pragma unroll
    for (int step = E / 2; step >= 1; step >>= 1)
#pragma unroll
        for (int e = 0; e < step; ++e) s[e] = s[e] + s[e + step];
    (void)gl;
    return __shfl_sync(mask, s[0], 0, G);
}

// Which dims a lane's RoPE pairs with, worked out once per thread: partner dim and
// frequency index of each of its E dims, and which of them are the pair's first member.
template <int E> struct RopePlan {
    uint32_t pc[E];       // partner | frequency << 16
    uint32_t first = 0;   // bit e: dim d0 + e is the pair's first member
    uint32_t active = 0;  // bit e: dim d0 + e is rotated
    __device__ __forceinline__ void init(uint32_t d0, uint32_t pairing, uint32_t rot) {
        const uint32_t half = rot / 2;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const uint32_t d = d0 + (uint32_t)e;
            uint32_t i = 0, partner = 0;
            bool is_a = false;
            if (d < rot) {
                if (pairing == 2) {
                    i = d >> 1;
                    is_a = (d & 1u) == 0;
                    partner = is_a ? d + 1 : d - 1;
                } else {
                    is_a = d < half;
                    i = is_a ? d : d - half;
                    partner = is_a ? d + half : d - half;
                }
                active |= 1u << e;
            }
            if (is_a) first |= 1u << e;
            pc[e] = partner | (i << 16);
        }
    }
};

// RoPE with a precomputed plan (the same arithmetic as rope_lanes below).
template <int E>
__device__ __forceinline__ void rope_planned(float (&x)[E], float *sm, uint32_t d0, const RopePlan<E> &plan,
                                             const RopeCS *cs, bool inverse, unsigned mask) {
#pragma unroll
    for (int e = 0; e < E; ++e) sm[d0 + e] = x[e];
    __syncwarp(mask);
#pragma unroll
    for (int e = 0; e < E; ++e) {
        if (!((plan.active >> e) & 1u)) continue;
        const bool is_a = (plan.first >> e) & 1u;
        const RopeCS t = cs[plan.pc[e] >> 16];
        const float other = sm[plan.pc[e] & 0xffffu];
        const float a = is_a ? x[e] : other;
        const float b = is_a ? other : x[e];
        const float ac = a * t.c, bs = b * t.s, bc = b * t.c, as = a * t.s;
        if (inverse)
            x[e] = is_a ? ac + bs : bc - as;
        else
            x[e] = is_a ? ac - bs : bc + as;
    }
    __syncwarp(mask);
}

// RoPE on the rotary dims through the group's shared-memory row `sm` (P floats).
// inverse: x <- R(-angle) x (rope_unrotate), else x <- R(angle) x (rope_rotate).
template <int E>
__device__ __forceinline__ void rope_lanes(float (&x)[E], float *sm, uint32_t d0, uint32_t pairing, uint32_t rot,
                                           const RopeCS *cs, bool inverse, unsigned mask) {
#pragma unroll
    for (int e = 0; e < E; ++e) sm[d0 + e] = x[e];
    __syncwarp(mask);
    const uint32_t half = rot / 2;
#pragma unroll
    for (int e = 0; e < E; ++e) {
        const uint32_t d = d0 + (uint32_t)e;
        if (d >= rot) continue;
        uint32_t i, partner;
        bool is_a;
        if (pairing == 2) {  // interleaved: (2i, 2i + 1)
            i = d >> 1;
            is_a = (d & 1u) == 0;
            partner = is_a ? d + 1 : d - 1;
        } else {  // split half: (i, i + rot/2)
            is_a = d < half;
            i = is_a ? d : d - half;
            partner = is_a ? d + half : d - half;
        }
        const RopeCS t = cs[i];
        const float a = is_a ? x[e] : sm[partner];
        const float b = is_a ? sm[partner] : x[e];
        const float ac = a * t.c, bs = b * t.s, bc = b * t.c, as = a * t.s;
        if (inverse)
            x[e] = is_a ? ac + bs : bc - as;
        else
            x[e] = is_a ? ac - bs : bc + as;
    }
    __syncwarp(mask);
}

// Integer-valued floats to and from small integers with adds instead of conversion
// instructions (a quarter of the arithmetic rate): exact for |x| < 2^22.
__device__ __forceinline__ uint32_t small_int_bits(float x, float offset) {
    return __float_as_uint(x + (8388608.0f + offset)) - 0x4b000000u;  // (uint32)(x + offset)
}
__device__ __forceinline__ float small_uint_float(uint32_t u) { return __uint_as_float(0x4b000000u | u) - 8388608.0f; }

// e8_encode_group (lattice_codec.h) with every array in registers: the same operations
// in the same order, with the data-dependent index (the parity repair, the coset pick)
// turned into selects over an unrolled loop. The equivalence tests hold it to the bytes
// of the shared function.
__device__ __forceinline__ float e8_coset_nearest_reg(const float (&t)[8], float shift, float lo, float hi,
                                                      float (&k)[8]) {
    float v[8], err[8];
    int parity = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        v[i] = (t[i] - 0.25f) - shift;
        const float r = clampf_(round_half_up(v[i]), lo, hi);
        k[i] = r;
        const float d = r - v[i];
        err[i] = d * d;
        parity ^= (int)__float_as_uint(r + 12582912.0f);  // low bit: the parity of r
    }
    if (parity & 1) {
        int best = 0;
        float best_delta = 0.0f, best_alt = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float dir = (v[i] > k[i]) ? 1.0f : -1.0f;
            float alt = k[i] + dir;
            if (alt > hi || alt < lo) alt = k[i] - dir;
            const float d = alt - v[i];
            const float delta = d * d - err[i];
            if (i == 0 || delta < best_delta) {
                best = i;
                best_delta = delta;
                best_alt = alt;
            }
        }
#pragma unroll
        for (int i = 0; i < 8; ++i)
            if (i == best) {
                const float d = best_alt - v[i];
                k[i] = best_alt;
                err[i] = d * d;
            }
    }
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) total += err[i];
    return total;
}

template <int B> __device__ __forceinline__ void e8_encode_group_bits(const float (&t)[8], uint8_t *out) {
    const float lo = -(float)(1 << (B - 1));
    const float hi = (float)((1 << (B - 1)) - 1);
    float k0[8], k1[8];
    const float e0 = e8_coset_nearest_reg(t, 0.0f, lo, hi, k0);
    const float e1 = e8_coset_nearest_reg(t, 0.5f, lo, hi, k1);
    const bool c1 = e1 < e0;
    const float half = (float)(1 << (B - 1));
    if constexpr (B <= 4) {  // 8 * B <= 32 bits: one 32-bit word
        uint32_t acc = c1 ? 1u : 0u;
#pragma unroll
        for (int i = 0; i < 7; ++i) acc |= small_int_bits(c1 ? k1[i] : k0[i], half) << (1 + i * B);
        acc |= (small_int_bits(c1 ? k1[7] : k0[7], half) >> 1) << (1 + 7 * B);
#pragma unroll
        for (int b = 0; b < B; ++b) out[b] = (uint8_t)(acc >> (8 * b));
    } else {
        uint64_t acc = c1 ? 1u : 0u;
#pragma unroll
        for (int i = 0; i < 7; ++i) acc |= (uint64_t)small_int_bits(c1 ? k1[i] : k0[i], half) << (1 + i * B);
        acc |= (uint64_t)(small_int_bits(c1 ? k1[7] : k0[7], half) >> 1) << (1 + 7 * B);
#pragma unroll
        for (int b = 0; b < B; ++b) out[b] = (uint8_t)(acc >> (8 * b));
    }
}

template <int B> __device__ __forceinline__ void e8_decode_group_bits(const uint8_t *in, float (&q)[8]) {
    uint64_t acc = 0;
#pragma unroll
    for (int b = 0; b < B; ++b) acc |= (uint64_t)in[b] << (8 * b);
    const uint32_t mask = (1u << B) - 1u;
    const float half = (float)(1 << (B - 1));
    const float shift = (acc & 1u) ? 0.75f : 0.25f;
    uint32_t par = 0;
#pragma unroll
    for (int i = 0; i < 7; ++i) {
        const uint32_t u = (uint32_t)(acc >> (1 + i * B)) & mask;
        par ^= u;
        q[i] = (small_uint_float(u) - half) + shift;
    }
    const uint32_t u7 = (((uint32_t)(acc >> (1 + 7 * B)) & (mask >> 1)) << 1) | (par & 1u);
    q[7] = (small_uint_float(u7) - half) + shift;
}

// Dispatch on the bit width so shifts and loops have constant bounds.
__device__ __forceinline__ void e8_encode_any(const float (&t)[8], int bits, uint8_t *out) {
    switch (bits) {
    case 1: e8_encode_group_bits<1>(t, out); break;
    case 2: e8_encode_group_bits<2>(t, out); break;
    case 3: e8_encode_group_bits<3>(t, out); break;
    case 4: e8_encode_group_bits<4>(t, out); break;
    case 5: e8_encode_group_bits<5>(t, out); break;
    case 6: e8_encode_group_bits<6>(t, out); break;
    case 7: e8_encode_group_bits<7>(t, out); break;
    default: e8_encode_group_bits<8>(t, out); break;
    }
}
__device__ __forceinline__ void e8_decode_any(const uint8_t *in, int bits, float (&q)[8]) {
    switch (bits) {
    case 1: e8_decode_group_bits<1>(in, q); break;
    case 2: e8_decode_group_bits<2>(in, q); break;
    case 3: e8_decode_group_bits<3>(in, q); break;
    case 4: e8_decode_group_bits<4>(in, q); break;
    case 5: e8_decode_group_bits<5>(in, q); break;
    case 6: e8_decode_group_bits<6>(in, q); break;
    case 7: e8_decode_group_bits<7>(in, q); break;
    default: e8_decode_group_bits<8>(in, q); break;
    }
}

// Finds the item whose [begin, next begin) holds `row` (begin values increase).
template <class T, class F>
__device__ __forceinline__ uint32_t find_item(const T *items, uint32_t n, uint64_t row, F begin_of) {
    uint32_t lo = 0, hi = n;  // answer in [lo, hi)
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) >> 1;
        if (begin_of(items[mid]) <= row)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

}  // namespace gpu
}  // namespace nq
