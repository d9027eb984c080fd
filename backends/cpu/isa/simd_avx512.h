// AVX-512 (F, BW, DQ, VL) primitives for kernels_impl.inc: 16 float lanes, k-masks.
// Included only by kernels_avx512.cpp; everything here has internal linkage.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace nq {
namespace {

struct Simd {
    static constexpr uint32_t W = 16;
    using F = __m512;
    using I = __m512i;
    using M = __mmask16;
    using H = __m256i;  // 16 fp16/bf16
    using D = __m512d;  // 8 doubles
    using FH = __m256;  // 8 floats (doubles rounded)
    using MD = __mmask8;
    static constexpr uint32_t WD = 8;

    static F load(const float *p) { return _mm512_load_ps(p); }
    static void store(float *p, F v) { _mm512_store_ps(p, v); }
    static I loadi(const void *p) { return _mm512_load_si512(p); }
    static void storei(void *p, I v) { _mm512_store_si512(p, v); }
    static F set1(float x) { return _mm512_set1_ps(x); }
    static I set1i(int32_t x) { return _mm512_set1_epi32(x); }
    static F zero() { return _mm512_setzero_ps(); }
    static I zeroi() { return _mm512_setzero_si512(); }

    static F add(F a, F b) { return _mm512_add_ps(a, b); }
    static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
    static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
    static F div(F a, F b) { return _mm512_div_ps(a, b); }
    static F sqrt(F a) { return _mm512_sqrt_ps(a); }
    static F min(F a, F b) { return _mm512_min_ps(a, b); }
    static F max(F a, F b) { return _mm512_max_ps(a, b); }
    static F floor(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
    static F xor_sign(F a, I m) { return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), m)); }

    static M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
    static M le(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
    static M gt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
    static M ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
    static M eq(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
    static M isnan(F a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
    static M m_and(M a, M b) { return (M)(a & b); }
    static M m_or(M a, M b) { return (M)(a | b); }
    static M m_andnot(M a, M b) { return (M)(~a & b); }  // b and not a
    static M m_none() { return 0; }
    static bool any(M m) { return m != 0; }
    static uint32_t bits(M m) { return m; }
    // m ? b : a, lane by lane
    static F sel(M m, F a, F b) { return _mm512_mask_blend_ps(m, a, b); }
    static I seli(M m, I a, I b) { return _mm512_mask_blend_epi32(m, a, b); }
    static F add_if(M m, F a, F b) { return _mm512_mask_add_ps(a, m, a, b); }  // m ? a + b : a

    static I cvtt(F a) { return _mm512_cvttps_epi32(a); }
    static F cvt(I a) { return _mm512_cvtepi32_ps(a); }  // exact for |a| < 2^24
    static F as_f(I a) { return _mm512_castsi512_ps(a); }
    static I as_i(F a) { return _mm512_castps_si512(a); }
    static I iadd(I a, I b) { return _mm512_add_epi32(a, b); }
    static I isub(I a, I b) { return _mm512_sub_epi32(a, b); }
    static I iand(I a, I b) { return _mm512_and_si512(a, b); }
    static I ior(I a, I b) { return _mm512_or_si512(a, b); }
    static I ixor(I a, I b) { return _mm512_xor_si512(a, b); }
    template <int N> static I srli(I a) { return _mm512_srli_epi32(a, N); }
    template <int N> static I slli(I a) { return _mm512_slli_epi32(a, N); }
    static M ieq(I a, I b) { return _mm512_cmpeq_epi32_mask(a, b); }
    static M itest(I a, I b) { return _mm512_test_epi32_mask(a, b); }  // (a & b) != 0

    // 16 u16 <-> 32-bit lanes (zero-extended / truncated)
    static I load_u16(const uint16_t *p) { return _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)); }
    static void store_u16(uint16_t *p, I v) { _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(v)); }

    // fp16 <-> f32 with the hardware instructions (F16C semantics; explicit rounding).
    static F f16_to_f32(__m256i h) { return _mm512_cvtph_ps(h); }
    static __m256i f32_to_f16(F f) { return _mm512_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

    // Loads n (<= 16) consecutive elements, zero elsewhere.
    static __m256i load_h(const uint16_t *p, uint32_t n) {
        return n >= 16 ? _mm256_loadu_si256((const __m256i *)p) : _mm256_maskz_loadu_epi16((__mmask16)((1u << n) - 1u), p);
    }
    static void store_h(uint16_t *p, __m256i v, uint32_t n) {
        if (n >= 16)
            _mm256_storeu_si256((__m256i *)p, v);
        else
            _mm256_mask_storeu_epi16(p, (__mmask16)((1u << n) - 1u), v);
    }
    static F load_f(const float *p, uint32_t n) {
        return n >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
    }
    static void store_f(float *p, F v, uint32_t n) {
        if (n >= 16)
            _mm512_storeu_ps(p, v);
        else
            _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), v);
    }
    static I h_to_i(__m256i h) { return _mm512_cvtepu16_epi32(h); }
    static __m256i i_to_h(I v) { return _mm512_cvtepi32_epi16(v); }

    // n (<= 16) B-byte fields at p, B <= 4, zero-extended into 32-bit lanes (lanes past
    // n are zero); and back. Nothing past the n * B bytes is read or written.
    template <int B> static I expand_fields(const uint8_t *p, uint32_t n) {
        const __mmask64 m = n * B >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (n * B)) - 1);
        const __m512i raw = _mm512_maskz_loadu_epi8(m, p);
        if constexpr (B == 4) return raw;
        if constexpr (B == 2) return _mm512_cvtepu16_epi32(_mm512_castsi512_si256(raw));
        if constexpr (B == 1) return _mm512_cvtepu8_epi32(_mm512_castsi512_si128(raw));
        // B == 3: dwords 3L..3L+2 (groups 4L..4L+3) into 128-bit lane L, then 3 -> 4 bytes
        const __m512i spread =
            _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 11), raw);
        const __m512i pick = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1));
        return _mm512_shuffle_epi8(spread, pick);
    }
    template <int B> static void compact_fields(uint8_t *p, I v, uint32_t n) {
        const __mmask64 m = n * B >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (n * B)) - 1);
        __m512i out;
        if constexpr (B == 4) out = v;
        if constexpr (B == 2) out = _mm512_castsi256_si512(_mm512_cvtepi32_epi16(v));
        if constexpr (B == 1) out = _mm512_castsi128_si512(_mm512_cvtepi32_epi8(v));
        if constexpr (B == 3) {
            const __m512i pick =
                _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1));
            out = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 15, 15, 15, 15),
                                           _mm512_shuffle_epi8(v, pick));
        }
        _mm512_mask_storeu_epi8(p, m, out);
    }

    // In-place transpose of a 16 x 16 block of floats held in r[0..15].
    __attribute__((always_inline)) static void transpose(F *r) {
        F t[16], u[16];
        for (int k = 0; k < 8; ++k) {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        for (int k = 0; k < 4; ++k) {
            const __m512d a = _mm512_castps_pd(t[4 * k]), b = _mm512_castps_pd(t[4 * k + 1]);
            const __m512d c = _mm512_castps_pd(t[4 * k + 2]), d = _mm512_castps_pd(t[4 * k + 3]);
            u[4 * k + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
            u[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
            u[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
            u[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
        }
        // u[4k + c], 128-bit lane L: column c + 4L of rows 4k..4k+3
        for (int c = 0; c < 4; ++c) {
            const F v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
            const F v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88),
                    v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
            r[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
            r[c + 8] = _mm512_shuffle_f32x4(v0, v2, 0xdd);
            r[c + 4] = _mm512_shuffle_f32x4(v1, v3, 0x88);
            r[c + 12] = _mm512_shuffle_f32x4(v1, v3, 0xdd);
        }
    }

    // ---- doubles (RoPE tables)
    static D loadd(const double *p) { return _mm512_loadu_pd(p); }
    static void stored(double *p, D v) { _mm512_storeu_pd(p, v); }
    static D set1d(double x) { return _mm512_set1_pd(x); }
    static D addd(D a, D b) { return _mm512_add_pd(a, b); }
    static D subd(D a, D b) { return _mm512_sub_pd(a, b); }
    static D muld(D a, D b) { return _mm512_mul_pd(a, b); }
    static D divd(D a, D b) { return _mm512_div_pd(a, b); }
    static D absd(D a) { return _mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(a), _mm512_set1_epi64(0x7fffffffffffffffll))); }
    static D negd(D a) { return _mm512_castsi512_pd(_mm512_xor_si512(_mm512_castpd_si512(a), _mm512_set1_epi64((long long)0x8000000000000000ull))); }
    static D rintd(D a) { return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static D seld(MD m, D a, D b) { return _mm512_mask_blend_pd(m, a, b); }
    static MD ltd(D a, D b) { return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ); }
    // Low two bits of a non-negative integer-valued double < 2^52.
    static __m512i quadrant(D k) {
        return _mm512_and_si512(_mm512_castpd_si512(_mm512_add_pd(k, _mm512_set1_pd(4503599627370496.0))),
                                _mm512_set1_epi64(3));
    }
    static MD qeq(__m512i q, int64_t v) { return _mm512_cmpeq_epi64_mask(q, _mm512_set1_epi64(v)); }
    static __m256 cvtd_f(D a) { return _mm512_cvt_roundpd_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static D cvtf_d(__m256 a) { return _mm512_cvtps_pd(a); }
    // |f| - (the float just below |f|), as a double: the smaller of f's two ulps.
    static D ulp_below(__m256 f) {
        const __m256i a = _mm256_and_si256(_mm256_castps_si256(f), _mm256_set1_epi32(0x7fffffff));
        const __m256 below = _mm256_castsi256_ps(_mm256_sub_epi32(a, _mm256_set1_epi32(1)));
        return _mm512_sub_pd(_mm512_cvtps_pd(_mm256_castsi256_ps(a)), _mm512_cvtps_pd(below));
    }
    static MD md_or(MD a, MD b) { return (MD)(a | b); }
    static uint32_t bitsd(MD m) { return m; }
    static FH load_fh(const float *p) { return _mm256_loadu_ps(p); }
    static void store_fh(float *p, FH v) { _mm256_storeu_ps(p, v); }
};

}  // namespace
}  // namespace nq
