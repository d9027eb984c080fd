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
// Lane i < n: the b bytes of group i (b <= 4) at p + i*b; lanes >= n: 0. Reads 4 bytes
// per group where the image has them (up to `end`), else exactly b.
inline vu load_group_codes(const uint8_t *p, uint32_t b, uint32_t n, const uint8_t *end) {
    uint32_t lanes[16] = {};
    const bool wide = p + (size_t)n * b + 4 <= end;
    for (uint32_t i = 0; i < n; ++i) std::memcpy(&lanes[i], p + i * b, wide ? 4 : b);
    const uint32_t keep = b >= 4 ? 0xffffffffu : (1u << (8 * b)) - 1u;
    vu r;
    std::memcpy(&r, lanes, sizeof r);
    return r & keep;
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
