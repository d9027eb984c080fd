// Attention kernels for AVX2 (+F16C): attention_impl.inc with each 16-lane vector held
// in two 8-float registers. Compiled with the flags of kernels_avx2.cpp (CMakeLists.txt).
#include <cmath>
#include <cstdint>
#include <cstring>

#include "attention_kernels.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__F16C__)
#define NQ_ATTN_AVX2 1
#if defined(__GNUC__) && !defined(__clang__)
// 16-lane vector types passed between internal functions: no ABI is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#include <immintrin.h>

namespace nq {
namespace {
using vf = float __attribute__((vector_size(64), aligned(4)));
using vu = uint32_t __attribute__((vector_size(64), aligned(4)));

inline vf vload_h16(const uint16_t *p) {
    const __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
    const __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p + 8)));
    vf r;
    std::memcpy(&r, &lo, 32);
    std::memcpy(reinterpret_cast<char *>(&r) + 32, &hi, 32);
    return r;
}
inline float f16f(uint16_t h) { return _cvtsh_ss(h); }
// No FMA in the AVX2 set this build assumes: multiply, then add.
inline vf madd(vf a, vf b, vf c) { return a * b + c; }
inline float hsum(vf a) {
    __m256 lo, hi;
    std::memcpy(&lo, &a, 32);
    std::memcpy(&hi, reinterpret_cast<const char *>(&a) + 32, 32);
    __m256 s = _mm256_add_ps(lo, hi);
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}
inline vf vfloor(vf a) {
    __m256 lo, hi;
    std::memcpy(&lo, &a, 32);
    std::memcpy(&hi, reinterpret_cast<const char *>(&a) + 32, 32);
    lo = _mm256_floor_ps(lo);
    hi = _mm256_floor_ps(hi);
    vf r;
    std::memcpy(&r, &lo, 32);
    std::memcpy(reinterpret_cast<char *>(&r) + 32, &hi, 32);
    return r;
}
// Lane i < n: the b bytes of group i (b <= 4) at p + i*b; lanes >= n: 0. Sixteen
// groups with 16 readable bytes past them (up to `end`) take vector loads and byte
// shuffles (b = 3: four 16-byte loads, one group per dword); otherwise byte by byte,
// reading exactly n*b bytes.
alignas(16) constexpr uint8_t kSpread3[16] = {0, 1, 2, 0x80, 3, 4, 5, 0x80, 6, 7, 8, 0x80, 9, 10, 11, 0x80};
__attribute__((always_inline)) inline vu load_group_codes(const uint8_t *p, uint32_t b, uint32_t n, const uint8_t *end) {
    vu r;
    if (n == 16 && p + 16 * (size_t)b + 16 <= end) {
        __m256i lo, hi;
        if (b == 1) {
            lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p)));
            hi = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p + 8)));
        } else if (b == 2) {
            lo = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
            hi = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p + 16)));
        } else if (b == 3) {
            const __m128i sh = _mm_load_si128(reinterpret_cast<const __m128i *>(kSpread3));
            auto four = [&](const uint8_t *q) { return _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i *>(q)), sh); };
            lo = _mm256_set_m128i(four(p + 12), four(p));
            hi = _mm256_set_m128i(four(p + 36), four(p + 24));
        } else {
            lo = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
            hi = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p + 32));
        }
        std::memcpy(&r, &lo, 32);
        std::memcpy(reinterpret_cast<char *>(&r) + 32, &hi, 32);
        return r;
    }
    uint32_t lanes[16] = {};
    for (uint32_t i = 0; i < n; ++i)
        for (uint32_t k = 0; k < b; ++k) lanes[i] |= (uint32_t)p[i * b + k] << (8 * k);
    std::memcpy(&r, lanes, sizeof r);
    return r;
}
inline vf reduce16(const vf *a) {
    vf r;
    for (int t = 0; t < 16; ++t) r[t] = hsum(a[t]);
    return r;
}
// Accumulator vectors of the packed logits, rows of the packed value sums.
constexpr uint32_t kLogitAccs = 4;
constexpr uint32_t kValueRows = 2;
}  // namespace
}  // namespace nq

#include "attention_impl.inc"
#endif

namespace nq {
#if defined(NQ_ATTN_AVX2)
namespace {
constexpr AttnKernels kAttn{"avx2", coded_logits, coded_accumulate, f16_logits, f16_accumulate, f32_logits, exp_sum};
}
const AttnKernels *attn_kernels_avx2() { return &kAttn; }
#else
const AttnKernels *attn_kernels_avx2() { return nullptr; }
#endif
}  // namespace nq
