// fp16 and bf16 conversions done with integer operations only, so the result does not
// depend on the compiler, the ISA or the caller's FTZ/DAZ and rounding modes.
#pragma once
#include <cstdint>
#include <cstring>
#include "nq_hd.h"

namespace nq {

NQ_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
    return __float_as_uint(f);
#else
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
#endif
}

NQ_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, 4);
    return f;
#endif
}

// IEEE binary16 -> binary32, exact (subnormals included).
NQ_HD float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t out;
    if (exp == 0x1fu) {
        out = sign | 0x7f800000u | (man << 13);  // inf / nan (payload kept)
    } else if (exp != 0) {
        out = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        out = sign;
    } else {
        // subnormal: normalise the mantissa
        int e = -1;
        do {
            man <<= 1;
            ++e;
        } while ((man & 0x400u) == 0);
        out = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    return bits_f32(out);
}

// binary32 -> binary16, round to nearest even, overflow to inf, NaN kept quiet.
NQ_HD uint16_t f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) {  // inf or nan
        return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u | ((absx >> 13) & 0x3ffu) : 0u));
    }
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520: inf
    if (absx < 0x38800000u) {                                      // below the smallest normal half
        if (absx < 0x33000000u) return (uint16_t)sign;             // < 2^-25: rounds to 0
        uint32_t e = absx >> 23;
        uint32_t man = (absx & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e;  // 14..24 bits dropped (in units of the half subnormal)
        uint32_t q = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
        return (uint16_t)(sign | q);
    }
    uint32_t q = absx - 0x38000000u;  // rebias exponent (127 -> 15)
    uint32_t rem = q & 0x1fffu;
    q >>= 13;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ++q;
    return (uint16_t)(sign | q);
}

// The stored f16 of a key-mean element (FORMAT.md 1.8): a mean that is not finite or
// rounds beyond the f16 range is stored as 0, so that channel is coded uncentred (a
// non-finite input is then refused by its own token, and one huge key does not make
// every key of its head unrepresentable).
NQ_HD uint16_t key_mean_f16(float m) {
    const uint16_t h = f32_to_f16(m);
    return (h & 0x7c00u) == 0x7c00u ? (uint16_t)0 : h;
}

NQ_HD float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

// binary32 -> bfloat16, round to nearest even; NaN stays NaN.
NQ_HD uint16_t f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    uint32_t lsb = (x >> 16) & 1u;
    x += 0x7fffu + lsb;
    return (uint16_t)(x >> 16);
}

}  // namespace nq
