// Attention kernels for AVX-512 (F, BW, DQ, VL): attention_impl.inc over 16-float
// registers. Compiled with the flags of kernels_avx512.cpp (CMakeLists.txt); runs only
// after cpu_isa_detected() has seen the CPU and OS support.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "attention_kernels.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__) && defined(__F16C__)
#define NQ_ATTN_AVX512 1
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsics headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

namespace nq {
namespace {
using vf = float __attribute__((vector_size(64), aligned(4)));
using vu = uint32_t __attribute__((vector_size(64), aligned(4)));

inline vf vload_h16(const uint16_t *p) {
    return (vf)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
}
inline float f16f(uint16_t h) { return _cvtsh_ss(h); }
inline vf madd(vf a, vf b, vf c) { return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
inline float hsum(vf a) { return _mm512_reduce_add_ps((__m512)a); }
inline vf vfloor(vf a) { return (vf)_mm512_roundscale_ps((__m512)a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
// Index tables of the 3-byte case, loaded from memory: no 64-byte-aligned vector is
// built on the stack (sanitizers' fake stacks align frames to 32 bytes only).
alignas(64) constexpr int32_t kDwordOf3[16] = {0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 12};
alignas(64) constexpr int32_t kBytesOf3[16] = {(int32_t)0x80020100, (int32_t)0x80050403, (int32_t)0x80080706,
                                               (int32_t)0x800b0a09, (int32_t)0x80020100, (int32_t)0x80050403,
                                               (int32_t)0x80080706, (int32_t)0x800b0a09, (int32_t)0x80020100,
                                               (int32_t)0x80050403, (int32_t)0x80080706, (int32_t)0x800b0a09,
                                               (int32_t)0x80020100, (int32_t)0x80050403, (int32_t)0x80080706,
                                               (int32_t)0x800b0a09};

// Lane i < n: the b bytes of group i (b <= 4) at p + i*b, zero-extended; lanes >= n: 0.
// A masked load reads exactly n*b bytes (no byte past them, no fault). For 3 bytes,
// 128-bit lane L takes bytes 12L..12L+11 (dwords 3L..3L+2), one group per dword.
__attribute__((always_inline)) inline vu load_group_codes(const uint8_t *p, uint32_t b, uint32_t n, const uint8_t *) {
    const uint32_t bytes = n * b;
    const __mmask64 k = bytes >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << bytes) - 1);
    const __m512i v = _mm512_maskz_loadu_epi8(k, p);
    if (b == 1) return (vu)_mm512_cvtepu8_epi32(_mm512_castsi512_si128(v));
    if (b == 2) return (vu)_mm512_cvtepu16_epi32(_mm512_castsi512_si256(v));
    if (b == 3)
        return (vu)_mm512_shuffle_epi8(_mm512_permutexvar_epi32(_mm512_load_si512(kDwordOf3), v),
                                       _mm512_load_si512(kBytesOf3));
    return (vu)v;
}

// r[t] = sum of the lanes of a[t], for 16 vectors: pairwise unpacks, then 128-bit
// block shuffles.
__attribute__((always_inline)) inline vf reduce16(const vf *a) {
    vf s[8], u[4];  // alignment 4 (see load_group_codes)
    for (int i = 0; i < 8; ++i) {
        const __m512 x = (__m512)a[2 * i], y = (__m512)a[2 * i + 1];
        s[i] = (vf)_mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
    }
    for (int i = 0; i < 4; ++i) {
        const __m512 x = (__m512)s[2 * i], y = (__m512)s[2 * i + 1];
        u[i] = (vf)_mm512_add_ps(_mm512_shuffle_ps(x, y, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    const __m512 u0 = (__m512)u[0], u1 = (__m512)u[1], u2 = (__m512)u[2], u3 = (__m512)u[3];
    const __m512 y01 = _mm512_add_ps(_mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 y23 = _mm512_add_ps(_mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(3, 2, 3, 2)));
    return (vf)_mm512_add_ps(_mm512_shuffle_f32x4(y01, y23, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(y01, y23, _MM_SHUFFLE(3, 1, 3, 1)));
}
// Accumulator vectors of the packed logits, rows of the packed value sums.
constexpr uint32_t kLogitAccs = 16;
constexpr uint32_t kValueRows = 4;
}  // namespace
}  // namespace nq

#include "attention_impl.inc"
#endif

namespace nq {
#if defined(NQ_ATTN_AVX512)
namespace {
constexpr AttnKernels kAttn{"avx512", coded_logits, coded_accumulate, f16_logits, f16_accumulate, f32_logits, exp_sum};
}
const AttnKernels *attn_kernels_avx512() { return &kAttn; }
#else
const AttnKernels *attn_kernels_avx512() { return nullptr; }
#endif
}  // namespace nq
