// AVX2 (+F16C) primitives for kernels_impl.inc: 8 float lanes, masks held as vectors
// of all-ones/all-zeros lanes. Included only by kernels_avx2.cpp; internal linkage.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace nq {
namespace {

struct Simd {
    static constexpr uint32_t W = 8;
    using F = __m256;
    using I = __m256i;
    using M = __m256;
    using H = __m128i;   // 8 fp16/bf16
    using D = __m256d;   // 4 doubles
    using FH = __m128;   // 4 floats
    using MD = __m256d;
    static constexpr uint32_t WD = 4;

    static F load(const float *p) { return _mm256_load_ps(p); }
    static void store(float *p, F v) { _mm256_store_ps(p, v); }
    static I loadi(const void *p) { return _mm256_load_si256((const __m256i *)p); }
    static void storei(void *p, I v) { _mm256_store_si256((__m256i *)p, v); }
    static F set1(float x) { return _mm256_set1_ps(x); }
    static I set1i(int32_t x) { return _mm256_set1_epi32(x); }
    static F zero() { return _mm256_setzero_ps(); }
    static I zeroi() { return _mm256_setzero_si256(); }

    static F add(F a, F b) { return _mm256_add_ps(a, b); }
    static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
    static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
    static F div(F a, F b) { return _mm256_div_ps(a, b); }
    static F sqrt(F a) { return _mm256_sqrt_ps(a); }
    static F min(F a, F b) { return _mm256_min_ps(a, b); }
    static F max(F a, F b) { return _mm256_max_ps(a, b); }
    static F floor(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
    static F xor_sign(F a, I m) { return _mm256_xor_ps(a, _mm256_castsi256_ps(m)); }

    static M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
    static M le(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
    static M gt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
    static M ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
    static M eq(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
    static M isnan(F a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
    static M m_and(M a, M b) { return _mm256_and_ps(a, b); }
    static M m_or(M a, M b) { return _mm256_or_ps(a, b); }
    static M m_andnot(M a, M b) { return _mm256_andnot_ps(a, b); }  // b and not a
    static M m_none() { return _mm256_setzero_ps(); }
    static bool any(M m) { return _mm256_movemask_ps(m) != 0; }
    static uint32_t bits(M m) { return (uint32_t)_mm256_movemask_ps(m); }
    // m ? b : a, lane by lane
    static F sel(M m, F a, F b) { return _mm256_blendv_ps(a, b, m); }
    static I seli(M m, I a, I b) {
        return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), m));
    }
    static F add_if(M m, F a, F b) { return _mm256_blendv_ps(a, _mm256_add_ps(a, b), m); }

    static I cvtt(F a) { return _mm256_cvttps_epi32(a); }
    static F cvt(I a) { return _mm256_cvtepi32_ps(a); }  // exact for |a| < 2^24
    static F as_f(I a) { return _mm256_castsi256_ps(a); }
    static I as_i(F a) { return _mm256_castps_si256(a); }
    static I iadd(I a, I b) { return _mm256_add_epi32(a, b); }
    static I isub(I a, I b) { return _mm256_sub_epi32(a, b); }
    static I iand(I a, I b) { return _mm256_and_si256(a, b); }
    static I ior(I a, I b) { return _mm256_or_si256(a, b); }
    static I ixor(I a, I b) { return _mm256_xor_si256(a, b); }
    template <int N> static I srli(I a) { return _mm256_srli_epi32(a, N); }
    template <int N> static I slli(I a) { return _mm256_slli_epi32(a, N); }
    static M ieq(I a, I b) { return _mm256_castsi256_ps(_mm256_cmpeq_epi32(a, b)); }
    static M itest(I a, I b) {  // (a & b) != 0
        const __m256i z = _mm256_cmpeq_epi32(_mm256_and_si256(a, b), _mm256_setzero_si256());
        return _mm256_castsi256_ps(_mm256_xor_si256(z, _mm256_set1_epi32(-1)));
    }

    static I h_to_i(H h) { return _mm256_cvtepu16_epi32(h); }
    static H i_to_h(I v) {  // low 16 bits of each lane (values are < 2^16)
        const __m256i p = _mm256_packus_epi32(v, v);
        return _mm256_castsi256_si128(_mm256_permute4x64_epi64(p, 0x08));
    }
    static I load_u16(const uint16_t *p) { return h_to_i(_mm_loadu_si128((const __m128i *)p)); }
    static void store_u16(uint16_t *p, I v) { _mm_storeu_si128((__m128i *)p, i_to_h(v)); }

    static F f16_to_f32(H h) { return _mm256_cvtph_ps(h); }
    static H f32_to_f16(F f) { return _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

    static H load_h(const uint16_t *p, uint32_t n) {
        if (n >= 8) return _mm_loadu_si128((const __m128i *)p);
        alignas(16) uint16_t t[8] = {};
        std::memcpy(t, p, (size_t)n * 2);
        return _mm_load_si128((const __m128i *)t);
    }
    static void store_h(uint16_t *p, H v, uint32_t n) {
        if (n >= 8) return _mm_storeu_si128((__m128i *)p, v);
        alignas(16) uint16_t t[8];
        _mm_store_si128((__m128i *)t, v);
        std::memcpy(p, t, (size_t)n * 2);
    }
    static __m256i lane_mask(uint32_t n) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    static F load_f(const float *p, uint32_t n) { return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lane_mask(n)); }
    static void store_f(float *p, F v, uint32_t n) {
        if (n >= 8)
            _mm256_storeu_ps(p, v);
        else
            _mm256_maskstore_ps(p, lane_mask(n), v);
    }

    // n (<= 8) B-byte fields at p, B <= 4, zero-extended into 32-bit lanes (lanes past n
    // are zero); and back. Nothing past the n * B bytes is read or written.
    template <int B> static I expand_fields(const uint8_t *p, uint32_t n) {
        alignas(32) uint8_t t[32] = {};
        std::memcpy(t, p, (size_t)n * B);
        const __m256i raw = _mm256_load_si256((const __m256i *)t);
        if constexpr (B == 4) return raw;
        if constexpr (B == 2) return _mm256_cvtepu16_epi32(_mm256_castsi256_si128(raw));
        if constexpr (B == 1) return _mm256_cvtepu8_epi32(_mm256_castsi256_si128(raw));
        const __m256i spread = _mm256_permutevar8x32_epi32(raw, _mm256_setr_epi32(0, 1, 2, 2, 3, 4, 5, 5));
        const __m256i pick = _mm256_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1, 0, 1, 2, -1, 3, 4,
                                              5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
        return _mm256_shuffle_epi8(spread, pick);
    }
    template <int B> static void compact_fields(uint8_t *p, I v, uint32_t n) {
        alignas(32) uint8_t t[32];
        if constexpr (B == 4) _mm256_store_si256((__m256i *)t, v);
        if constexpr (B == 2) _mm_store_si128((__m128i *)t, i_to_h(v));
        if constexpr (B == 1) {
            const __m128i h = i_to_h(v);
            _mm_store_si128((__m128i *)t, _mm_packus_epi16(h, h));
        }
        if constexpr (B == 3) {
            const __m256i pick = _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4, 5,
                                                  6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
            const __m256i packed = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, pick),
                                                               _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 7, 7));
            _mm256_store_si256((__m256i *)t, packed);
        }
        std::memcpy(p, t, (size_t)n * B);
    }

    // In-place transpose of an 8 x 8 block of floats held in r[0..7].
    __attribute__((always_inline)) static void transpose(F *r) {
        const F t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
        const F t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
        const F t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
        const F t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
        const F u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
        const F u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
        const F u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
        const F u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
        r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
        r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
        r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
        r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
        r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
        r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
        r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
        r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
    }

    // ---- doubles (RoPE tables)
    static D loadd(const double *p) { return _mm256_loadu_pd(p); }
    static void stored(double *p, D v) { _mm256_storeu_pd(p, v); }
    static D set1d(double x) { return _mm256_set1_pd(x); }
    static D addd(D a, D b) { return _mm256_add_pd(a, b); }
    static D subd(D a, D b) { return _mm256_sub_pd(a, b); }
    static D muld(D a, D b) { return _mm256_mul_pd(a, b); }
    static D divd(D a, D b) { return _mm256_div_pd(a, b); }
    static D absd(D a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a); }
    static D negd(D a) { return _mm256_xor_pd(a, _mm256_set1_pd(-0.0)); }
    static D rintd(D a) { return _mm256_round_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static D seld(MD m, D a, D b) { return _mm256_blendv_pd(a, b, m); }
    static MD ltd(D a, D b) { return _mm256_cmp_pd(a, b, _CMP_LT_OQ); }
    static MD md_or(MD a, MD b) { return _mm256_or_pd(a, b); }
    static uint32_t bitsd(MD m) { return (uint32_t)_mm256_movemask_pd(m); }
    // Low two bits of a non-negative integer-valued double < 2^52.
    static __m256i quadrant(D k) {
        return _mm256_and_si256(_mm256_castpd_si256(_mm256_add_pd(k, _mm256_set1_pd(4503599627370496.0))),
                                _mm256_set1_epi64x(3));
    }
    static MD qeq(__m256i q, int64_t v) { return _mm256_castsi256_pd(_mm256_cmpeq_epi64(q, _mm256_set1_epi64x(v))); }
    // Round to nearest even: the driver runs the kernels under the default MXCSR.
    static FH cvtd_f(D a) { return _mm256_cvtpd_ps(a); }
    static D cvtf_d(FH a) { return _mm256_cvtps_pd(a); }
    static D ulp_below(FH f) {
        const __m128i a = _mm_and_si128(_mm_castps_si128(f), _mm_set1_epi32(0x7fffffff));
        const __m128 below = _mm_castsi128_ps(_mm_sub_epi32(a, _mm_set1_epi32(1)));
        return _mm256_sub_pd(_mm256_cvtps_pd(_mm_castsi128_ps(a)), _mm256_cvtps_pd(below));
    }
    static FH load_fh(const float *p) { return _mm_loadu_ps(p); }
    static void store_fh(float *p, FH v) { _mm_storeu_ps(p, v); }
};

}  // namespace
}  // namespace nq
