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
using vf = float __attribute__((vector_size(64)));
using vu = uint32_t __attribute__((vector_size(64)));

inline vf vload_h16(const uint16_t *p) {
    return (vf)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
}
inline float f16f(uint16_t h) { return _cvtsh_ss(h); }
inline vf madd(vf a, vf b, vf c) { return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
inline float hsum(vf a) { return _mm512_reduce_add_ps((__m512)a); }
inline vf vfloor(vf a) { return (vf)_mm512_roundscale_ps((__m512)a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
// Lane i: the 32 bits at p + i*b, for lanes below n (others 0).
inline vu gather_codes(const uint8_t *p, uint32_t b, uint32_t n) {
    const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                           _mm512_set1_epi32((int)b));
    const __mmask16 k = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
    return (vu)_mm512_mask_i32gather_epi32(_mm512_setzero_si512(), k, idx, p, 1);
}
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
