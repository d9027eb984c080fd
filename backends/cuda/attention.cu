// Decode-step attention straight from resident blocks (nq_attention_decode on a GPU).
//
// One CTA per (split, KV head, sequence): it walks the sequence's block table on the
// device, takes its share of the kept tokens, and produces the partial softmax state
// (running max m, sum l, weighted values) of every query of its KV head's group. Each
// warp owns 32-token chunks and keeps its own state; the CTA merges its warps, and
// with several splits the last CTA of a (sequence, KV head) to finish (an atomic
// counter in the workspace) merges the splits and writes out + lse. No host
// synchronisation; the grid depends only on (num_splits, KV heads, num_seqs).
//
// Keys of coded tokens in blocks with RoPE kept or absent are never decoded: with
// k = S H (s_k q_pt) / n (signs S, unnormalised Walsh-Hadamard H, FORMAT 1.6),
// <q, k> = s_k / n <H S q, q_pt>, so the query is rotated once per CTA. Values are
// accumulated in the rotated domain (sum p s_v q_pt); one inverse transform per query
// at the end returns them. Raw fp16 sink/window tokens are attended in the original
// domain; their value sums are rotated forward (y = H S v) once per pass. Keys of
// blocks with RoPE removed are decoded per token (inverse Hadamard, RoPE at the stored
// position). backends/cuda/NOTES.md has the measurements.
#include "gpu_runtime.h"  // first: the runtime defines __host__/__device__ for the shared headers
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "../../src/attention/attention.h"
#include "../../src/backend.h"
#include "../../src/core/block_view.h"
#include "../../src/core/rope.h"
#include "../../src/core/vector_codec.h"
#include "kernels.cuh"
#include "launch.h"

namespace nq {
namespace gpu {

namespace {

// The tensor-core path (mma.sync, sm_80 and later); the CPU stand-in and HIP keep the
// CUDA-core kernel.
#if !defined(NQ_GPU_SIM) && !defined(__HIPCC__) && !defined(NQ_HIP) && !defined(NQ_ATTN_NO_MMA) && \
    (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800)
#define NQ_ATTN_MMA 1
#endif

#if defined(NQ_GPU_SIM) || defined(__HIPCC__) || defined(NQ_HIP)
#define NQ_ATTN_NOINLINE  // HIP: a call would make the LDS of every kernel count for each
#else
#define NQ_ATTN_NOINLINE __noinline__
#endif

// NQ_ATTN_TRACE (benchmarks only): thread 0 of each CTA stamps the global timer at
// its phases: 0 start, 1 share found, 2 queries ready, 3 pass done, 4 partials written,
// 5 exit (not last), 6 merge done (last CTA); inside them (first query pass): 7 queries
// loaded, 8 queries rotated, and on the tensor-core path (warp 0) 9 first block's view
// and mean bias, 10 first tile done, 11 coded sweep done, 12 raw sweep done.
#if defined(NQ_ATTN_TRACE) && !defined(NQ_GPU_SIM) && !defined(NQ_HIP) && !defined(__HIPCC__)
constexpr uint32_t kTraceCtas = 16384;
constexpr uint32_t kTraceStamps = 16;
__device__ unsigned long long g_attn_trace[kTraceCtas][kTraceStamps];
#define NQ_TRACE(i)                                                                                   \
    do {                                                                                              \
        if (threadIdx.x == 0) {                                                                       \
            const uint32_t id_ = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);      \
            unsigned long long t_;                                                                    \
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_));                                    \
            if (id_ < kTraceCtas && !g_attn_trace[id_][i]) g_attn_trace[id_][i] = t_;                 \
        }                                                                                             \
    } while (0)
#else
#define NQ_TRACE(i) \
    do {            \
    } while (0)
#endif

constexpr unsigned kAttnThreads = 128;
constexpr unsigned kAttnWarps = kAttnThreads / 32;
constexpr uint32_t kMaxFreq = kMaxHeadDim / 2;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
#if defined(NQ_GPU_SIM)
constexpr uint64_t kMinSplitTokens = 32;  // the stand-in's short test sequences still merge several splits
#else
constexpr uint64_t kMinSplitTokens = 256;  // 16 tiles, 4 per warp (measured: 64 made 4K slower, 55.5 vs 45.3 us)
#endif

struct AttnParams {
    const void *const *images;
    const uint32_t *indptr;
    const void *q;
    int64_t q_seq, q_tok, q_head;
    void *out;
    int64_t o_seq, o_tok, o_head;
    float *lse;
    const int64_t *qpos;
    float *part_acc;     // [seq][kv head][split][nq][D] unnormalised rotated-domain sums
    float *part_ml;      // [seq][kv head][split][nq][2] (max in log2 units, sum)
    uint32_t *counters;  // [seq][kv head] CTAs finished (reset by the last one)
    float scale, softcap;
    uint32_t window, splits, num_seqs, q_tokens, D, kv_heads, group, nq, dtype;
    uint32_t rot, pairing;  // the context's RoPE (blocks with RoPE removed)
    float rope_m;
    uint32_t mma;  // 1: head_dim 128 CTAs may take the tensor-core path
    uint32_t rope_reg;  // 1: head_dim 128, every dim rotated: RoPE-removed keys decoded per lane in registers
    double inv_freq[kMaxFreq];
    float freq_hi[64], freq_lo[64];  // inv_freq[i] = hi + lo (float pair) for the per-lane angle offsets
};

__device__ __forceinline__ uint16_t ld_u16(const uint8_t *p) {
#if defined(NQ_GPU_SIM)
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
#else
    return *reinterpret_cast<const uint16_t *>(p);
#endif
}
__device__ __forceinline__ uint32_t ld_u32(const uint8_t *p) {
#if defined(NQ_GPU_SIM)
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
#else
    return *reinterpret_cast<const uint32_t *>(p);
#endif
}
__device__ __forceinline__ uint64_t ld_u64(const uint8_t *p) {
#if defined(NQ_GPU_SIM)
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
#else
    return *reinterpret_cast<const uint64_t *>(p);
#endif
}

// The 8b-bit code of group g of a coded row (b bytes at g * b: aligned for b = 1, 2, 4,
// 8 because rows are head_dim * b / 8 bytes from a 16-byte aligned section).
__device__ __forceinline__ uint64_t load_group(const uint8_t *row, uint32_t g, uint32_t b) {
    const uint8_t *p = row + g * b;
    switch (b) {
    case 1: return *p;
    case 2: return ld_u16(p);
    case 4: return ld_u32(p);
    case 8: return ld_u64(p);
    default: {
        uint64_t a = 0;
        for (uint32_t i = 0; i < b; ++i) a |= (uint64_t)p[i] << (8 * i);
        return a;
    }
    }
}

// Bits 1 + i b (i < 7): the low bits of u_0..u_6, whose parity completes u_7.
__device__ __forceinline__ uint64_t e8_parity_mask(uint32_t b) {
    uint64_t m = 0;
    for (uint32_t i = 0; i < 7; ++i) m |= 1ull << (1 + i * b);
    return m;
}

// Coordinate p of a group's codebook point (FORMAT 1.4 E8, 1.5 scalar).
__device__ __forceinline__ float group_value(uint64_t code, uint32_t p, uint32_t b, bool e8, uint64_t pmask) {
    const uint32_t mask = (1u << b) - 1u;
    if (!e8) return small_uint_float((uint32_t)(code >> (p * b)) & mask) - 0.5f * (float)mask;
    uint32_t u;
    if (p < 7) {
        u = (uint32_t)(code >> (1 + p * b)) & mask;
    } else {
        const uint32_t par = (uint32_t)__popcll(code & pmask) & 1u;
        u = ((((uint32_t)(code >> (1 + 7 * b))) & (mask >> 1)) << 1) | par;
    }
    return (small_uint_float(u) - (float)(1u << (b - 1))) + ((code & 1u) ? 0.75f : 0.25f);
}

// All 8 coordinates of an E8 group with b known at compile time.
// u goes into the top mantissa bits of 1.0f: (1 + u / 2^B) * 2^B + (off - 2^B) is
// exactly u + off (one rounding of an exact result), three instructions a coordinate.
template <int B, class W> __device__ __forceinline__ void e8_point(W code, float (&q)[8]) {
    const uint32_t mask = (1u << B) - 1u;
    const float scale = (float)(1 << B);
    const float off = ((code & 1u) ? 0.75f : 0.25f) - (float)(1 << (B - 1)) - scale;
    uint32_t par = 0;
#pragma unroll
    for (int i = 0; i < 7; ++i) {
        const uint32_t u = (uint32_t)(code >> (1 + i * B)) & mask;
        par ^= u;
        q[i] = __uint_as_float(0x3f800000u | (u << (23 - B))) * scale + off;
    }
    const uint32_t u7 = ((((uint32_t)(code >> (1 + 7 * B))) & (mask >> 1)) << 1) | (par & 1u);
    q[7] = __uint_as_float(0x3f800000u | (u7 << (23 - B))) * scale + off;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, 32);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o, 32));
    return v;
}
__device__ __forceinline__ uint32_t warp_or(uint32_t v) {
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) v |= __shfl_xor_sync(0xffffffffu, v, o, 32);
    return v;
}

// Key-centred blocks (FORMAT.md 1.8): a coded key is m + s_k p in the rotated domain, so
// its logit gains <qrot, m>, the same for every token of the block and head. qrot holds
// QC queries of D floats (rotated, scaled); every lane gets the QC sums (0 without a mean).
template <int QC>
__device__ __forceinline__ void key_mean_bias(const float *qrot, const BlockView &v, uint32_t h, uint32_t D,
                                              uint32_t lane, float (&kb)[QC]) {
#pragma unroll
    for (int c = 0; c < QC; ++c) kb[c] = 0.0f;
    if (!v.key_mean()) return;
    const uint16_t *m = v.k_mean(h);
#pragma unroll
    for (int c = 0; c < QC; ++c) {
        float acc = 0.0f;
        for (uint32_t d = lane; d < D; d += 32) acc += qrot[c * D + d] * f16_to_f32(m[d]);
        kb[c] = warp_sum(acc);
    }
}

// Reads of another CTA's partial results: past the (incoherent) L1.
__device__ __forceinline__ float ld_partial(const float *p) {
#if defined(NQ_GPU_SIM)
    return *p;
#elif defined(__HIPCC__) || defined(NQ_HIP)
    return *static_cast<const volatile float *>(p);
#else
    return __ldcg(p);
#endif
}

// Four consecutive partial elements (16-byte aligned) in one load.
__device__ __forceinline__ void ld_partial4(const float *p, float *x) {
#if defined(NQ_GPU_SIM) || defined(__HIPCC__) || defined(NQ_HIP)
    for (int e = 0; e < 4; ++e) x[e] = ld_partial(p + e);
#else
    const float4 v = __ldcg(reinterpret_cast<const float4 *>(p));
    x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
#endif
}

// A hint that the 128-byte line at p will be read soon: fetched into L2 while the caller
// does other work (no register waits on it). Nothing on the stand-in and HIP.
__device__ __forceinline__ void prefetch_l2(const void *p) {
#if !defined(NQ_GPU_SIM) && !defined(__HIPCC__) && !defined(NQ_HIP)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#else
    (void)p;
#endif
}

__device__ __forceinline__ float load_elem(const void *base, int64_t i, uint32_t dtype) {
    if (dtype == kF32) return static_cast<const float *>(base)[i];
    return half_to_float(static_cast<const uint16_t *>(base)[i], dtype);
}
__device__ __forceinline__ void store_elem(void *base, int64_t i, uint32_t dtype, float v) {
    if (dtype == kF32)
        static_cast<float *>(base)[i] = v;
    else
        static_cast<uint16_t *>(base)[i] = float_to_half(v, dtype);
}

// Unnormalised Walsh-Hadamard over blocks of n of rows[r][0..D) in shared memory, for
// `rows` rows, by `nthreads` threads starting at `tid`; `sync` separates stages.
template <class Sync>
__device__ __forceinline__ void fwht_shared(float *rows, uint32_t nrows, uint32_t D, uint32_t n, uint32_t tid,
                                            uint32_t nthreads, Sync sync) {
    const uint32_t half = D / 2;
    for (uint32_t h = 1; h < n; h <<= 1) {
        for (uint32_t k = tid; k < nrows * half; k += nthreads) {
            const uint32_t r = k / half, i = k - r * half;
            const uint32_t j = (i / h) * 2 * h + (i % h);
            float *x = rows + (size_t)r * D;
            const float a = x[j], b = x[j + h];
            x[j] = a + b;
            x[j + h] = a - b;
        }
        sync();
    }
}

// cos and sin of position * inv_freq: the angle in float64 reduced by whole turns,
// then single-precision sincos of the remainder.
__device__ __forceinline__ void rope_cs(const AttnParams &p, int64_t pos, uint32_t i, float *c, float *s) {
    const double ang = (double)pos * p.inv_freq[i];
    const double turns = rint(ang * 0.15915494309189535);
    const float r = (float)(ang - turns * 6.283185307179586);
    float sv, cv;
    sincosf(r, &sv, &cv);
    *c = cv * p.rope_m;
    *s = sv * p.rope_m;
}

template <int NDL, int QC> struct Smem {
    static constexpr uint32_t DMAX = 32u * NDL;
    float qrot[QC * DMAX];              // H S q * scale / n (coded keys)
    float qorig[QC * DMAX];             // q * scale (raw and decoded keys)
    float pv[kAttnWarps][32 * QC];      // per warp: p (times s_v for coded tokens)
    alignas(16) float row[kAttnWarps][DMAX];  // per warp: one key decoded with RoPE (mode REMOVE), or the block's mean
    alignas(16) float rcs[NDL == 4 ? kAttnWarps : 1][128];  // per warp (head_dim 128, RoPE removed): (cos, sin) of each pair at the chunk's first position
    float cm[kAttnWarps][QC], cl[kAttnWarps][QC];
    alignas(16) float cacc[kAttnWarps][QC * DMAX];  // per warp: raw value sums, then all sums; then the merged output
    float fm[QC], fl[QC];
    float sw[QC][kMaxAttentionSplits];  // merging splits: max, then weight of each split
    float sl[QC][kMaxAttentionSplits];  // merging splits: sum of each split
    uint4 vbuf[NDL == 4 ? kAttnWarps : 1][32][2];  // head_dim 128, 2-bit values: the chunk's codes
    uint32_t last;
};

// Per-warp running state of the QC queries of a pass. acc holds the rotated-domain
// value sums of the lane's dims: NDL consecutive dims (lane * NDL ...), or with head_dim
// 128 (AV = 8) the 8 dims of group lane % 16 for the tokens of half-warp lane / 16.
// Raw (fp16) values are summed in the original domain into the warp's cacc rows (each
// lane owns dims lane, lane + 32, ...), rotated forward once at the end of the pass.
template <int AV, int QC> struct WarpState {
    float m[QC], l[QC];  // max (log2 units, warp-uniform), per-lane partial sum
    float acc[QC][AV];
    bool has_raw;        // warp-uniform: cacc[warp] holds raw value sums
};
template <int NDL, int FD> constexpr int acc_width() { return FD == 128 ? 8 : NDL; }

// Raw slot of kept token j (a sink or a window token).
__device__ __forceinline__ uint32_t slot_raw(const BlockView &v, uint32_t j) {
    uint32_t slot;
    (void)v.coded_slot(j, &slot);
    return slot;
}

// Raw values of the chunk, weighted, into the warp's original-domain sums.
template <int QC>
__device__ __forceinline__ void raw_values(float *racc, bool &has_raw, const BlockView &v, uint32_t h, uint32_t j0,
                                           uint32_t n, const float *pv, uint32_t D, uint32_t lane) {
    for (uint32_t t = 0; t < n; ++t) {
        uint32_t vslot;
        if (v.coded_slot(j0 + t, &vslot)) continue;
        float w[QC];
        bool any = false;
#pragma unroll
        for (int c = 0; c < QC; ++c) {
            w[c] = pv[t * QC + c];
            any |= w[c] != 0.0f;
        }
        if (!any) continue;  // warp-uniform: every lane read the same weights
        has_raw = true;
        const uint16_t *vr = v.v_raw(h, vslot);
        for (uint32_t d = lane; d < D; d += 32) {
            const float y = f16_to_f32(vr[d]);
#pragma unroll
            for (int c = 0; c < QC; ++c) racc[c * D + d] += w[c] * y;
        }
    }
}

// ---- Keys with RoPE removed, head_dim 128: one token per lane, in registers ----------
// A RoPE-removed key is rebuilt as the model saw it: decoded in the rotated domain,
// transformed back (Walsh-Hadamard, signs, 1/n), the block's mean added, then rotated by
// RoPE at its own position. The warp-per-key path does this through shared memory with
// a barrier per stage; here each lane rebuilds its own token's 128 dims in registers
// (no barriers, no reductions), and the warp shares two per-chunk tables: the block's
// mean transformed back, and cos/sin of the chunk's first position (float64-reduced).
// A token's angle is that base plus (position - first position) * frequency, its cos and
// sin from the angle-sum rule, so each lane pays two fast sincos of a small angle per pair.

// hadamard_sign_negative's bits for dims 0..63 and 64..127 as constants (the same
// splitmix64 words, FORMAT.md 1.6), so the unrolled loops below fold each sign into its
// instruction; a wrong bit fails the RoPE-removed attention tests.
constexpr uint64_t sign_word(uint64_t w) {
    uint64_t z = 0x6e7175616e74ull + 0x9e3779b97f4a7c15ull * (w + 1u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
constexpr uint64_t kSignLo = sign_word(0), kSignHi = sign_word(1);

// Fills the warp's tables for chunk j0 of block v, head h.
template <int NDL, int QC>
__device__ __forceinline__ void removed_chunk_tables(const AttnParams &P, Smem<NDL, QC> &sm, const BlockView &v,
                                                     uint32_t h, uint32_t j0, uint32_t warp, uint32_t lane) {
    float *mrow = sm.row[warp];
    const uint16_t *km = v.key_mean() ? v.k_mean(h) : nullptr;
    for (uint32_t d = lane; d < 128; d += 32) mrow[d] = km ? f16_to_f32(km[d]) : 0.0f;
    __syncwarp();
    if (km) fwht_shared(mrow, 1, 128, 128, lane, 32, [] { __syncwarp(); });
    for (uint32_t d = lane; d < 128; d += 32) {
        const float y = mrow[d] * (1.0f / 128.0f);
        mrow[d] = hadamard_sign_negative(d) ? -y : y;
    }
    const int64_t p0 = v.position(h, j0);
    for (uint32_t i = lane; i < 64; i += 32) rope_cs(P, p0, i, &sm.rcs[warp][2 * i], &sm.rcs[warp][2 * i + 1]);
    __syncwarp();
}

// x <- R(angle) x for the pairs of one pairing (IL: (2i, 2i+1), else (i, i + 64)), the
// angle of pair i being base_i + delta * inv_freq[i]. rcs holds cos, sin of base_i (with
// the RoPE attention factor), pair by pair (16-byte loads: two pairs each).
template <bool IL>
__device__ __forceinline__ void rope_reg(const AttnParams &P, const float *rcs, float delta, float (&k)[128]) {
    constexpr float kTwoPiHi = 6.28318548202514648f, kTwoPiLo = -1.7484555314695172e-07f;
    float base[4];
#pragma unroll
    for (int i = 0; i < 64; ++i) {
        if ((i & 1) == 0) {
            const uint4 u = ld16(rcs + 2 * i);
            base[0] = __uint_as_float(u.x);
            base[1] = __uint_as_float(u.y);
            base[2] = __uint_as_float(u.z);
            base[3] = __uint_as_float(u.w);
        }
        // delta * inv_freq with the product's rounding error kept (positions in a chunk can
        // lie thousands apart after eviction), reduced by whole turns (Cody-Waite).
        const float xa = P.freq_hi[i] * delta;
        const float xe = fmaf(P.freq_hi[i], delta, -xa) + P.freq_lo[i] * delta;
        const float turns = rintf(xa * 0.15915494309189535f);
        const float r = fmaf(-turns, kTwoPiLo, fmaf(-turns, kTwoPiHi, xa)) + xe;
        float sd, cd;
        __sincosf(r, &sd, &cd);
        const float c0 = base[2 * (i & 1)], s0 = base[2 * (i & 1) + 1];
        const float c = c0 * cd - s0 * sd, s = s0 * cd + c0 * sd;
        const int a = IL ? 2 * i : i, b = IL ? 2 * i + 1 : i + 64;
        const float ka = k[a], kb = k[b];
        k[a] = ka * c - kb * s;
        k[b] = kb * c + ka * s;
    }
}

// Logits of the lane's RoPE-removed coded key (codes kc, scale sk, delta positions after
// the chunk's first) against the pass's QC queries (qorig: q * scale, original domain).
template <int NDL, int QC, int KB>
__device__ __forceinline__ void removed_logits(const AttnParams &P, const Smem<NDL, QC> &sm, const uint8_t *kc,
                                               float sk, uint32_t kb, bool e8, float delta, uint32_t warp,
                                               float (&x)[QC]) {
    float k[128];
    if constexpr (KB == 3) {
        uint32_t w[13];
#pragma unroll
        for (int q = 0; q < 3; ++q) {
            const uint4 u = ld16(kc + 16 * q);
            w[4 * q] = u.x;
            w[4 * q + 1] = u.y;
            w[4 * q + 2] = u.z;
            w[4 * q + 3] = u.w;
        }
        w[12] = 0;
#pragma unroll
        for (int g = 0; g < 16; ++g) {
            const int bit = 24 * g, wi = bit >> 5, off = bit & 31;
            const uint32_t code = (uint32_t)(((((uint64_t)w[wi + 1]) << 32) | w[wi]) >> off);
            float pt[8];
            e8_point<3>(code, pt);
#pragma unroll
            for (int i = 0; i < 8; ++i) k[8 * g + i] = pt[i];
        }
    } else {
        const uint64_t pm = e8_parity_mask(kb);
#pragma unroll
        for (int g = 0; g < 16; ++g) {
            const uint64_t code = load_group(kc, (uint32_t)g, kb);
#pragma unroll
            for (int i = 0; i < 8; ++i) k[8 * g + i] = group_value(code, (uint32_t)i, kb, e8, pm);
        }
    }
    // Back to the model's domain: H, signs and 1/n (with the scale), plus the mean.
#pragma unroll
    for (int hh = 1; hh < 128; hh <<= 1)
#pragma unroll
        for (int i = 0; i < 128; ++i)
            if ((i & hh) == 0) {
                const float a = k[i], b = k[i + hh];
                k[i] = a + b;
                k[i + hh] = a - b;
            }
    const float s = sk * (1.0f / 128.0f);
    const float *mrow = sm.row[warp];
#pragma unroll
    for (int d0 = 0; d0 < 128; d0 += 4) {
        const uint4 u = ld16(mrow + d0);
        const float m4[4] = {__uint_as_float(u.x), __uint_as_float(u.y), __uint_as_float(u.z), __uint_as_float(u.w)};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int d = d0 + e;
            const bool neg = (((d < 64 ? kSignLo : kSignHi) >> (d & 63)) & 1u) != 0;
            k[d] = fmaf(neg ? -k[d] : k[d], s, m4[e]);
        }
    }
    if (P.pairing == kPairInterleaved)
        rope_reg<true>(P, sm.rcs[warp], delta, k);
    else
        rope_reg<false>(P, sm.rcs[warp], delta, k);
#pragma unroll
    for (int c = 0; c < QC; ++c) {
        float dot = 0.0f;
#pragma unroll
        for (int d = 0; d < 128; d += 4) {
            const uint4 a = ld16(sm.qorig + c * 128 + d);
            dot += __uint_as_float(a.x) * k[d] + __uint_as_float(a.y) * k[d + 1] + __uint_as_float(a.z) * k[d + 2] +
                   __uint_as_float(a.w) * k[d + 3];
        }
        x[c] = dot;
    }
}

// One chunk of up to 32 consecutive kept tokens [j0, j0 + n) of head h of a block.
template <int NDL, int QC, int FD, int KB, int VB, int RM>
__device__ __forceinline__ void attend_chunk(const AttnParams &P, Smem<NDL, QC> &sm,
                                             WarpState<acc_width<NDL, FD>(), QC> &st,
                                             const BlockView &v, uint32_t h, uint32_t j0, uint32_t n, uint32_t seq,
                                             uint32_t qc0, uint32_t warp, uint32_t lane, const float (&kbias)[QC]) {
    const uint32_t D = FD ? (uint32_t)FD : P.D;
    const uint32_t kb = KB ? (uint32_t)KB : v.k_bits, vb = VB ? (uint32_t)VB : v.v_bits;
    const bool e8 = (KB && VB) ? true : v.codec == kCodecE8;
    const bool removed = v.rope_mode == NQ_ROPE_REMOVE;
    const uint32_t nblk = hadamard_block(D);
    const float inv_n = 1.0f / (float)nblk;
    const uint32_t j = j0 + lane;
    const bool active = lane < n;
    uint32_t slot = 0;
    const bool coded = active && v.coded_slot(j, &slot);
    const bool fast = coded && !removed;
    float x[QC];
#pragma unroll
    for (int c = 0; c < QC; ++c) x[c] = 0.0f;
    constexpr int AV = acc_width<NDL, FD>();
    float sv = 1.0f;
    if (coded) sv = bf16_to_f32(v.v_scales(h)[slot]);
    constexpr bool kStageV = FD == 128 && VB == 2 && NDL == 4;  // value codes staged in shared memory
    if constexpr (kStageV) {
        if (coded) {
            const uint8_t *vc = v.v_codes(h, slot);
            sm.vbuf[warp][lane][0] = ld16(vc);
            sm.vbuf[warp][lane][1] = ld16(vc + 16);
        }
    }

    // Logits of coded keys against the rotated query, one token per lane (plus kbias, the
    // block's key-mean offset per query).
    if (fast) {
        const uint8_t *kc = v.k_codes(h, slot);
        const float sk = bf16_to_f32(v.k_scales(h)[slot]);
        float dot[QC];
#pragma unroll
        for (int c = 0; c < QC; ++c) dot[c] = 0.0f;
        if constexpr (FD == 128 && KB == 3) {
            // 48 bytes of codes: three 16-byte loads, groups cut out of 64-bit windows.
            uint32_t w[13];
#pragma unroll
            for (int k = 0; k < 3; ++k) {
                const uint4 u = ld16(kc + 16 * k);
                w[4 * k] = u.x;
                w[4 * k + 1] = u.y;
                w[4 * k + 2] = u.z;
                w[4 * k + 3] = u.w;
            }
            w[12] = 0;
#pragma unroll
            for (int g = 0; g < 16; ++g) {
                const int bit = 24 * g, wi = bit >> 5, off = bit & 31;
                const uint32_t code = (uint32_t)(((((uint64_t)w[wi + 1]) << 32) | w[wi]) >> off);
                float pt[8];
                e8_point<3>(code, pt);
#pragma unroll
                for (int c = 0; c < QC; ++c) {
                    const uint4 a = ld16(sm.qrot + c * 128 + 8 * g), b = ld16(sm.qrot + c * 128 + 8 * g + 4);
                    dot[c] += __uint_as_float(a.x) * pt[0] + __uint_as_float(a.y) * pt[1] +
                              __uint_as_float(a.z) * pt[2] + __uint_as_float(a.w) * pt[3] +
                              __uint_as_float(b.x) * pt[4] + __uint_as_float(b.y) * pt[5] +
                              __uint_as_float(b.z) * pt[6] + __uint_as_float(b.w) * pt[7];
                }
            }
        } else {
            const uint64_t pm = e8_parity_mask(kb);
            for (uint32_t g = 0; g < D / 8; ++g) {
                const uint64_t code = load_group(kc, g, kb);
                float pt[8];
                if (KB && e8) {
                    e8_point<KB ? KB : 1>(code, pt);
                } else {
#pragma unroll
                    for (int i = 0; i < 8; ++i) pt[i] = group_value(code, (uint32_t)i, kb, e8, pm);
                }
#pragma unroll
                for (int c = 0; c < QC; ++c) {
                    const float *qr = sm.qrot + c * D + 8 * g;
#pragma unroll
                    for (int i = 0; i < 8; ++i) dot[c] += qr[i] * pt[i];
                }
            }
        }
#pragma unroll
        for (int c = 0; c < QC; ++c) x[c] = dot[c] * sk + kbias[c];
    } else if (active && !coded) {
        // A raw key against the unrotated query, one token per lane (16-byte loads).
        const uint16_t *kr = v.k_raw(h, slot_raw(v, j));
        const bool al = aligned16(kr);  // images the library allocates are; a caller's pool may not be
        for (uint32_t d = 0; d < D; d += 8) {
            float kx[8];
            if (al) {
                const uint4 u = ld16(kr + d);
                const uint32_t wv[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    kx[2 * i] = f16_to_f32((uint16_t)(wv[i] & 0xffffu));
                    kx[2 * i + 1] = f16_to_f32((uint16_t)(wv[i] >> 16));
                }
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) kx[i] = f16_to_f32(kr[d + i]);
            }
#pragma unroll
            for (int c = 0; c < QC; ++c) {
                const uint4 a = ld16(sm.qorig + c * D + d), b = ld16(sm.qorig + c * D + d + 4);
                x[c] += __uint_as_float(a.x) * kx[0] + __uint_as_float(a.y) * kx[1] + __uint_as_float(a.z) * kx[2] +
                        __uint_as_float(a.w) * kx[3] + __uint_as_float(b.x) * kx[4] + __uint_as_float(b.y) * kx[5] +
                        __uint_as_float(b.z) * kx[6] + __uint_as_float(b.w) * kx[7];
            }
        }
    }

    // Keys with RoPE removed, head_dim 128 with every dim rotated: one per lane in
    // registers (kernels built for it: RM). Else the warp decodes them one at a time.
    bool reg_done = false;  // warp-uniform
    if constexpr (FD == 128 && NDL == 4 && RM) {
        if (removed && P.rope_reg) {
            removed_chunk_tables<NDL, QC>(P, sm, v, h, j0, warp, lane);
            if (coded) {
                const float delta = (float)(v.position(h, j) - v.position(h, j0));
                removed_logits<NDL, QC, KB>(P, sm, v.k_codes(h, slot), bf16_to_f32(v.k_scales(h)[slot]), kb, e8,
                                            delta, warp, x);
            }
            reg_done = true;
        }
    }
    uint32_t slow = warp_or(coded && removed && !reg_done ? 1u << lane : 0u);
    float *row = sm.row[warp];
    while (slow) {
        const uint32_t t = (uint32_t)__popc((slow & (0u - slow)) - 1u);
        slow &= slow - 1u;
        const uint32_t jt = j0 + t;
        uint32_t st_slot;
        (void)v.coded_slot(jt, &st_slot);
        {
            const uint8_t *kc = v.k_codes(h, st_slot);
            const float sk = bf16_to_f32(v.k_scales(h)[st_slot]);
            const uint64_t pm = e8_parity_mask(kb);
            const uint16_t *km = v.key_mean() ? v.k_mean(h) : nullptr;
            for (uint32_t d = lane; d < D; d += 32)
                row[d] = group_value(load_group(kc, d >> 3, kb), d & 7u, kb, e8, pm) * sk + (km ? f16_to_f32(km[d]) : 0.0f);
            __syncwarp();
            fwht_shared(row, 1, D, nblk, lane, 32, [] { __syncwarp(); });
            for (uint32_t d = lane; d < D; d += 32) {
                const float y = row[d] * inv_n;
                row[d] = hadamard_sign_negative(d) ? -y : y;
            }
            __syncwarp();
            const int64_t pos = v.position(h, jt);
            for (uint32_t i = lane; i < P.rot / 2; i += 32) {
                uint32_t ia, ib;
                rope_pair((uint8_t)P.pairing, P.rot, i, &ia, &ib);
                float cs, sn;
                rope_cs(P, pos, i, &cs, &sn);
                const float a = row[ia], b = row[ib];
                row[ia] = a * cs - b * sn;
                row[ib] = b * cs + a * sn;
            }
            __syncwarp();
        }
#pragma unroll
        for (int c = 0; c < QC; ++c) {
            float s = 0.0f;
            for (uint32_t d = lane; d < D; d += 32) s += sm.qorig[c * D + d] * row[d];
            s = warp_sum(s);
            if (lane == t) x[c] = s;
        }
        __syncwarp();
    }

    // Mask, soft-cap, online softmax (log2 units).
    int64_t pos = 0;
    if (P.qpos && active) pos = v.position(h, j);
    float *pv = sm.pv[warp];
#pragma unroll
    for (int c = 0; c < QC; ++c) {
        const uint32_t qi = qc0 + (uint32_t)c;
        bool vis = active && qi < P.nq;
        if (vis && P.qpos) {
            const int64_t qp = P.qpos[(size_t)seq * P.q_tokens + qi / P.group];
            vis = pos <= qp && (P.window == 0 || qp - pos < (int64_t)P.window);
        }
        float xl = x[c];
        if (P.softcap > 0.0f) xl = P.softcap * tanhf(xl / P.softcap);
        xl = vis ? xl * kLog2e : -INFINITY;
        const float mnew = fmaxf(st.m[c], warp_max(xl));
        float p = 0.0f, corr = 1.0f;
        if (mnew != -INFINITY) {
            corr = exp2f(st.m[c] - mnew);
            p = vis ? exp2f(xl - mnew) : 0.0f;
        }
        st.m[c] = mnew;
        st.l[c] = st.l[c] * corr + p;
#pragma unroll
        for (int k = 0; k < AV; ++k) st.acc[c][k] *= corr;
        if (st.has_raw)
            for (uint32_t d = lane; d < D; d += 32) sm.cacc[warp][c * D + d] *= corr;
        pv[lane * QC + c] = p * sv;
    }
    __syncwarp();

    // Values.
    if constexpr (FD == 128) {
        // Half-warp per token, lane per E8 group: two tokens per step, codepoints with
        // compile-time positions; raw tokens after, one at a time.
        const uint32_t g = lane & 15u, half = lane >> 4;
        const uint64_t vpm = e8_parity_mask(vb);
        for (uint32_t t0 = 0; t0 < n; t0 += 2) {
            const uint32_t t = t0 + half, jt = j0 + t;
            uint32_t vslot;
            if (t >= n || !v.coded_slot(jt, &vslot)) continue;
            float w[QC];
            bool any = false;
#pragma unroll
            for (int c = 0; c < QC; ++c) {
                w[c] = pv[t * QC + c];
                any |= w[c] != 0.0f;
            }
            if (!any) continue;
            float pt[8];
            if constexpr (kStageV) {
                const uint32_t code = reinterpret_cast<const uint16_t *>(&sm.vbuf[warp][t][0])[g];
                e8_point<2>(code, pt);
            } else {
                const uint64_t code = load_group(v.v_codes(h, vslot), g, vb);
                if (VB && e8) {
                    e8_point<VB ? VB : 1>(code, pt);
                } else {
#pragma unroll
                    for (int i = 0; i < 8; ++i) pt[i] = group_value(code, (uint32_t)i, vb, e8, vpm);
                }
            }
#pragma unroll
            for (int c = 0; c < QC; ++c)
#pragma unroll
                for (int i = 0; i < 8; ++i) st.acc[c][i] += w[c] * pt[i];
        }
        raw_values<QC>(sm.cacc[warp], st.has_raw, v, h, j0, n, pv, D, lane);
    } else {
    // The lane's NDL consecutive dims, for every token of the chunk.
    const uint32_t d0 = lane * NDL;
    const uint64_t vpm = e8_parity_mask(vb);
    for (uint32_t t = 0; t < n; ++t) {
        const uint32_t jt = j0 + t;
        uint32_t vslot;
        const bool tc = v.coded_slot(jt, &vslot);
        float w[QC];
        bool any = false;
#pragma unroll
        for (int c = 0; c < QC; ++c) {
            w[c] = pv[t * QC + c];
            any |= w[c] != 0.0f;
        }
        if (tc) {
            if (!any || d0 >= D) continue;
            const uint8_t *vc = v.v_codes(h, vslot);
            float val[NDL];
            if constexpr (NDL >= 8) {
#pragma unroll
                for (int k8 = 0; k8 < NDL / 8; ++k8) {
                    const uint64_t code = load_group(vc, d0 / 8 + (uint32_t)k8, vb);
                    float pt[8];
                    if (VB && e8) {
                        e8_point<VB ? VB : 1>(code, pt);
                    } else {
#pragma unroll
                        for (int i = 0; i < 8; ++i) pt[i] = group_value(code, (uint32_t)i, vb, e8, vpm);
                    }
#pragma unroll
                    for (int i = 0; i < 8; ++i) val[8 * k8 + i] = pt[i];
                }
            } else {
                const uint64_t code = load_group(vc, d0 >> 3, vb);
#pragma unroll
                for (int k = 0; k < NDL; ++k) val[k] = group_value(code, (d0 & 7u) + (uint32_t)k, vb, e8, vpm);
            }
#pragma unroll
            for (int c = 0; c < QC; ++c)
#pragma unroll
                for (int k = 0; k < NDL; ++k) st.acc[c][k] += w[c] * val[k];
        }
    }
    raw_values<QC>(sm.cacc[warp], st.has_raw, v, h, j0, n, pv, D, lane);
    }
    __syncwarp();
}

// Writes the final output of the pass's queries: o[c][0..D) in shared memory holds the
// rotated-domain value sums divided by l; transforms back (S H / n) and stores.
template <int NDL, int QC>
__device__ void write_output(const AttnParams &P, Smem<NDL, QC> &sm, float *o, uint32_t seq, uint32_t kvh,
                             uint32_t qc0) {
    const uint32_t D = P.D, nblk = hadamard_block(D), tid = threadIdx.x;
    const float inv_n = 1.0f / (float)nblk;
    fwht_shared(o, QC, D, nblk, tid, kAttnThreads, [] { __syncthreads(); });
    for (uint32_t k = tid; k < QC * D; k += kAttnThreads) {
        const uint32_t c = k / D, d = k - c * D, qi = qc0 + c;
        if (qi >= P.nq) continue;
        const uint32_t i = qi / P.group, hq = kvh * P.group + qi % P.group;
        float y = o[k] * inv_n;
        if (hadamard_sign_negative(d)) y = -y;
        if (!(sm.fl[c] > 0.0f)) y = 0.0f;
        store_elem(P.out, (int64_t)seq * P.o_seq + (int64_t)i * P.o_tok + (int64_t)hq * P.o_head + d, P.dtype, y);
    }
    if (P.lse)
        for (uint32_t c = tid; c < QC; c += kAttnThreads) {
            const uint32_t qi = qc0 + c;
            if (qi >= P.nq) continue;
            const uint32_t i = qi / P.group, hq = kvh * P.group + qi % P.group;
            const float L = sm.fl[c];
            P.lse[((size_t)seq * P.q_tokens + i) * (P.group * P.kv_heads) + hq] =
                L > 0.0f ? (sm.fm[c] + log2f(L)) * kLn2 : -INFINITY;
        }
    __syncthreads();
}

#if defined(NQ_ATTN_MMA)
// ---------------------------------------------------------------------------------------
// Tensor-core path (head_dim 128, fp16/bf16 queries, at most 8 queries per KV head).
//
// A warp takes tiles of 16 kept tokens. Logits: S = Q K^T with mma.m16n8k16 (fp16
// operands, fp32 sums): A = the queries (rows 0-7 the fp16 part of the rotated query,
// rows 8-15 its rounding residue, so hi + lo logits carry ~22 bits), B = the key codes
// (16 dims x 8 tokens), decoded from the 3-bit E8 groups straight into fp16 pairs. The
// order of the 128 dims inside the mma's K dimension is free (the query fragments use
// the same order): thread t of a quad owns E8 groups 4t..4t+3 (12 code bytes of a row)
// and each group gives four pairs (i, i + 4). Values: O^T = V^T P^T with the 16 rows of
// an mma being coordinate i of the E8 groups 2g (rows 0-7) and 2g+1 (rows 8-15) of the
// 2-bit value codes, the 16 tokens as K and the queries as N: the logits' accumulator
// layout is the probabilities' B fragment, no exchange. The per-token scales stay out of
// the operands: s_k multiplies the fp32 logits, s_v the probability (p s_v 2^-E, E the
// exponent of a reference value scale, keeps it in fp16 range).
//
// A codepoint u - 2^(b-1) + c/2 + 1/4 becomes fp16 by or-ing u and the coset bits into
// the mantissa of a power of two and subtracting a constant (exact): 3 instructions per
// pair of coordinates. Tiles with raw (fp16) tokens, other bit widths or codecs take a
// CUDA-core path that feeds the same softmax state.
// ---------------------------------------------------------------------------------------
__device__ __forceinline__ void mma_f16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                        uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t hsub2(uint32_t a, uint32_t b) {
    uint32_t d;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ uint32_t f16x2(float lo, float hi) {
    uint32_t u;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(u) : "f"(hi), "f"(lo));
    return u;
}
__device__ __forceinline__ float f16f(uint32_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((uint16_t)h));
    return f;
}

// The four pairs (i, i + 4), i = 0..3, of a 3-bit E8 group (24-bit code, higher bits
// ignored) as fp16x2. Low halves: u at mantissa bits 7-9 of 8 (value 8 + u + c/2 + 1/4),
// high halves: u at bits 3-5 of 128; minus (12, 132).
constexpr uint32_t kK3Base0 = 0x58024820u, kK3Base1 = 0x58064860u, kK3Bias = 0x58204a00u;
__device__ __forceinline__ void k3_pairs(uint32_t code, uint32_t (&h)[4]) {
    constexpr uint32_t M = 0x00380380u;
    const uint32_t base = (code & 1u) ? kK3Base1 : kK3Base0;
    const uint32_t par = (uint32_t)__popc(code & 0x92492u) & 1u;  // low bits of u_0..u_6
    h[0] = hsub2(((code << 6) & M) | base, kK3Bias);
    h[1] = hsub2(((code << 3) & M) | base, kK3Bias);
    h[2] = hsub2((code & M) | base, kK3Bias);
    h[3] = hsub2(((code >> 3) & 0x380u) | ((code >> 2) & 0x300000u) | (par << 19) | base, kK3Bias);
}

// Coordinate i of a 2-bit E8 group for two tokens at once: X holds the first token's
// 16-bit group code in its low half, the second's in its high half. u at mantissa bits
// 7-8 of 8 (value 8 + u + c/2 + 1/4) in both halves, minus 10.
constexpr uint32_t kV2Base = 0x48204820u, kV2Bias = 0x49004900u, kV2M = 0x01800180u;
struct V2Pair {
    uint32_t X, base, par;
    __device__ __forceinline__ explicit V2Pair(uint32_t x) : X(x) {
        base = kV2Base | ((x << 6) & 0x00400040u);
        uint32_t y = x & 0x2aaa2aaau;  // low bits of u_0..u_6 of each half
        y ^= y >> 8;
        y ^= y >> 4;
        y ^= y >> 2;
        par = y;  // bits 1 and 17: the parities
    }
    template <int I> __device__ __forceinline__ uint32_t get() const {
        uint32_t s;
        if constexpr (I == 7)
            s = ((X >> 7) & 0x01000100u) | ((par << 6) & 0x00800080u);
        else if constexpr (I < 3)
            s = (X << (6 - 2 * I)) & kV2M;
        else
            s = (X >> (2 * I - 6)) & kV2M;
        return hsub2(s | base, kV2Bias);
    }
};

constexpr uint32_t kMmaTile = 16;

// Per-warp state: the rotated-domain value sums of 16 dims x 2 queries of the thread
// (times 2^-E), the running max (log2 units) and partial sum of query g = lane / 4.
struct MmaState {
    float acc[8][4];
    float m, l;
    bool has_raw;
};

// Shared memory of the path, overlaid on fields of Smem<4, QC> that it does not use:
// the query fragments in vbuf, per-warp logits / raw weights in pv.
template <int QC> struct MmaView {
    uint4 *qf;       // [8 k-steps][32 lanes]
    float *xs, *pw;  // per warp [16 tokens][QC]
    float *racc;     // per warp [QC][128]: raw value sums in the original domain
};

// 2^x by the special-function unit (2 ulp; -inf gives 0): the fp16 probabilities carry
// 11 bits.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Online softmax over the 4 logits (log2 units) of the thread's query g; rescales the
// sums when the max moves. Returns p.
template <int QC>
__device__ __forceinline__ void mma_softmax(MmaState &st, const float (&xl)[4], const bool (&vis)[4], float (&p)[4],
                                            float *racc, float *corr_sm, uint32_t lane) {
    float mt = -INFINITY;
#pragma unroll
    for (int k = 0; k < 4; ++k)
        if (vis[k]) mt = fmaxf(mt, xl[k]);
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
    const float mnew = fmaxf(st.m, mt);
    float corr = 1.0f, sum = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; ++k) p[k] = 0.0f;
    if (mnew != -INFINITY) {
        corr = fast_exp2(st.m - mnew);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            p[k] = vis[k] ? fast_exp2(xl[k] - mnew) : 0.0f;
            sum += p[k];
        }
    }
    st.m = mnew;
    st.l = st.l * corr + sum;
    if (__any_sync(0xffffffffu, corr != 1.0f)) {
        const uint32_t t = lane & 3u;
        const float ca = __shfl_sync(0xffffffffu, corr, (int)(8 * t));
        const float cb = __shfl_sync(0xffffffffu, corr, (int)(8 * t + 4));
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            st.acc[i][0] *= ca;
            st.acc[i][1] *= cb;
            st.acc[i][2] *= ca;
            st.acc[i][3] *= cb;
        }
        if (st.has_raw) {
            const uint32_t g = lane >> 2;
            if ((lane & 3u) == 0 && g < (uint32_t)QC) corr_sm[g] = corr;
            __syncwarp();
#pragma unroll
            for (int c = 0; c < QC; ++c) {
                const float f = corr_sm[c];
                for (uint32_t d = lane; d < 128; d += 32) racc[c * 128 + d] *= f;
            }
            __syncwarp();
        }
    }
}

// Visibility of the thread's 4 tokens (tile rows 2t, 2t+1, 8+2t, 9+2t) for query g.
template <int QC>
__device__ __forceinline__ void mma_visible(const AttnParams &P, const BlockView &v, uint32_t h, uint32_t j0,
                                            uint32_t valid_mask, uint32_t seq, uint32_t lane, bool (&vis)[4]) {
    const uint32_t g = lane >> 2, t = lane & 3u;
    const bool qok = g < P.nq && g < (uint32_t)QC;
    int64_t qp = 0;
    if (P.qpos && qok) qp = P.qpos[(size_t)seq * P.q_tokens + g / P.group];
    // Positions first_position + j (no positions section): the tile's range decides at once.
    bool all_in = P.qpos == nullptr;
    if (!all_in && v.pos_rows == 0) {
        const int64_t lo = (int64_t)(v.first_position + j0), hi = lo + 15;
        all_in = hi <= qp && (P.window == 0 || qp - lo < (int64_t)P.window);
    }
    if (__all_sync(0xffffffffu, all_in)) {  // the common case: no per-token positions
#pragma unroll
        for (int k = 0; k < 4; ++k) vis[k] = qok && ((valid_mask >> (2 * t + (k & 1) + 8 * (k >> 1))) & 1u);
        return;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t r = 2 * t + (k & 1) + 8 * (k >> 1);
        bool ok = qok && ((valid_mask >> r) & 1u);
        if (ok && !all_in) {
            const int64_t pos = v.position(h, j0 + r);
            ok = pos <= qp && (P.window == 0 || qp - pos < (int64_t)P.window);
        }
        vis[k] = ok;
    }
}

__device__ __forceinline__ float mma_logit(const AttnParams &P, float x) {
    if (P.softcap > 0.0f) x = P.softcap * tanhf(x / P.softcap);
    return x * kLog2e;
}

// The global loads of a fast tile, issued a tile ahead of their use. Nothing reads a
// loaded register before the next tile (a use right after the load would wait for it).
struct FastLoads {
    uint32_t wk[2][3];  // key codes of tokens g and 8 + g (groups 4t..4t+3)
    uint32_t wv[4];     // value codes (groups 2g, 2g+1) of tokens 2t, 2t+1, 8+2t, 9+2t
    uint32_t ks[2], vs[2];  // bf16 scales of tokens (2t, 2t+1) and (8+2t, 9+2t), low half first
};
__device__ __forceinline__ void mma_fast_load(FastLoads &L, const BlockView &v, uint32_t h, uint32_t j0, uint32_t n,
                                              uint32_t lane) {
    const uint32_t g = lane >> 2, t = lane & 3u;
    const uint32_t s0 = j0 - v.fp16_sinks;  // coded slot of row 0; rows past n repeat it (masked)
    const uint8_t *kc0 = v.k_codes(h, s0), *vc0 = v.v_codes(h, s0);
    const uint16_t *ks = v.k_scales(h) + s0, *vs = v.v_scales(h) + s0;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
        const uint32_t r = g + 8 * (uint32_t)nt;
        const uint8_t *kc = kc0 + (r < n ? r : 0u) * 48u + 12 * t;  // 48 bytes per 3-bit row of 128
        L.wk[nt][0] = ld_u32(kc);
        L.wk[nt][1] = ld_u32(kc + 4);
        L.wk[nt][2] = ld_u32(kc + 8);
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t r = 2 * t + (k & 1) + 8 * (k >> 1);
        L.wv[k] = ld_u32(vc0 + (r < n ? r : 0u) * 32u + 4 * g);  // 32 bytes per 2-bit row of 128
    }
    // Both scales of a pair in one 4-byte load when aligned (k and v scales of a head
    // start at the same offset in their 16-aligned sections).
    if (n == kMmaTile && ((uintptr_t)ks & 3u) == 0) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const uint32_t r = 2 * t + 8 * (uint32_t)hf;
            L.ks[hf] = ld_u32(reinterpret_cast<const uint8_t *>(ks + r));
            L.vs[hf] = ld_u32(reinterpret_cast<const uint8_t *>(vs + r));
        }
    } else {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const uint32_t r0 = 2 * t + 8 * (uint32_t)hf, r1 = r0 + 1;
            const uint32_t a = r0 < n ? r0 : 0u, b = r1 < n ? r1 : 0u;
            L.ks[hf] = (uint32_t)ks[a] | ((uint32_t)ks[b] << 16);
            L.vs[hf] = (uint32_t)vs[a] | ((uint32_t)vs[b] << 16);
        }
    }
}

// A tile of n <= 16 coded tokens [j0, j0 + n) of a K3/V2 E8 block.
template <int QC>
__device__ __forceinline__ void mma_fast_tile(const AttnParams &P, const MmaView<QC> &mv, float *corr_sm,
                                              MmaState &st, const FastLoads &L, const BlockView &v, uint32_t h,
                                              uint32_t j0, uint32_t n, uint32_t seq, uint32_t lane, float qinv,
                                              float kbias, float vmul) {
    float sk[4], sv[4];
    uint32_t wk[2][3], wv[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t kw = L.ks[k >> 1], vw = L.vs[k >> 1];
        sk[k] = __uint_as_float(k & 1 ? kw & 0xffff0000u : kw << 16);
        sv[k] = __uint_as_float(k & 1 ? vw & 0xffff0000u : vw << 16);
        wv[k] = L.wv[k];
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int i = 0; i < 3; ++i) wk[nt][i] = L.wk[nt][i];
    bool vis[4];
    mma_visible<QC>(P, v, h, j0, n >= 32 ? 0xffffffffu : ((1u << n) - 1u), seq, lane, vis);

    float S[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) S[nt][e] = 0.0f;
    // Query fragments one k-step ahead of the mma that reads them (shared-memory latency).
    uint4 qa = mv.qf[lane], qb = mv.qf[32 + lane];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        uint4 na = qa, nb = qb;
        if (kk < 3) {
            na = mv.qf[(2 * kk + 2) * 32 + lane];
            nb = mv.qf[(2 * kk + 3) * 32 + lane];
        }
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            uint32_t code;
            if (kk == 0)
                code = wk[nt][0];
            else if (kk == 1)
                code = __funnelshift_r(wk[nt][0], wk[nt][1], 24);
            else if (kk == 2)
                code = __funnelshift_r(wk[nt][1], wk[nt][2], 16);
            else
                code = wk[nt][2] >> 8;
            uint32_t hp[4];
            k3_pairs(code, hp);
            mma_f16(S[nt], qa.x, qa.y, qa.z, qa.w, hp[0], hp[1]);
            mma_f16(S[nt], qb.x, qb.y, qb.z, qb.w, hp[2], hp[3]);
        }
        qa = na;
        qb = nb;
    }
    float xl[4], p[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int nt = k >> 1, e = k & 1;
        xl[k] = mma_logit(P, (S[nt][e] + S[nt][e + 2]) * sk[k] * qinv + kbias);
    }
    mma_softmax<QC>(st, xl, vis, p, mv.racc, corr_sm, lane);
    const uint32_t b0 = f16x2(p[0] * sv[0] * vmul, p[1] * sv[1] * vmul);
    const uint32_t b1 = f16x2(p[2] * sv[2] * vmul, p[3] * sv[3] * vmul);
    const V2Pair xa0(__byte_perm(wv[0], wv[1], 0x5410)), xa1(__byte_perm(wv[0], wv[1], 0x7632));
    const V2Pair xb0(__byte_perm(wv[2], wv[3], 0x5410)), xb1(__byte_perm(wv[2], wv[3], 0x7632));
    mma_f16(st.acc[0], xa0.get<0>(), xa1.get<0>(), xb0.get<0>(), xb1.get<0>(), b0, b1);
    mma_f16(st.acc[1], xa0.get<1>(), xa1.get<1>(), xb0.get<1>(), xb1.get<1>(), b0, b1);
    mma_f16(st.acc[2], xa0.get<2>(), xa1.get<2>(), xb0.get<2>(), xb1.get<2>(), b0, b1);
    mma_f16(st.acc[3], xa0.get<3>(), xa1.get<3>(), xb0.get<3>(), xb1.get<3>(), b0, b1);
    mma_f16(st.acc[4], xa0.get<4>(), xa1.get<4>(), xb0.get<4>(), xb1.get<4>(), b0, b1);
    mma_f16(st.acc[5], xa0.get<5>(), xa1.get<5>(), xb0.get<5>(), xb1.get<5>(), b0, b1);
    mma_f16(st.acc[6], xa0.get<6>(), xa1.get<6>(), xb0.get<6>(), xb1.get<6>(), b0, b1);
    mma_f16(st.acc[7], xa0.get<7>(), xa1.get<7>(), xb0.get<7>(), xb1.get<7>(), b0, b1);
}

// Any other tile: raw (fp16) tokens, codes of other widths or codecs. Logits one token
// per lane on CUDA cores (coded keys against the rotated query, raw ones against the
// original), the same softmax; coded values through the mma with generically decoded
// fragments, raw values summed in the original domain (racc, rotated once per pass).
// RawOnly: a tile of sinks or window tokens only (the second sweep), compiled without
// the coded paths (on an H200 a raw tile through the general code cost 15-40 us of one
// warp's time under load, measured with NQ_ATTN_TRACE).
template <int QC, bool RawOnly>
__device__ __noinline__ void mma_slow_tile(const AttnParams &P, const Smem<4, QC> &sm, const MmaView<QC> &mv,
                                           float *corr_sm, MmaState &st, const BlockView &v, uint32_t h, uint32_t j0,
                                           uint32_t n, uint32_t seq, uint32_t warp, uint32_t lane,
                                           const float (&kbias)[QC], float vmul) {
    constexpr uint32_t D = 128;
    const uint32_t g = lane >> 2, t = lane & 3u;
    const bool e8 = v.codec == kCodecE8;
    const uint32_t kb = v.k_bits, vb = v.v_bits;
    float *xs = mv.xs + warp * 32 * QC;
    float *pw = xs + 16 * QC;
    // Logits: lanes r and r + 16 take token j0 + r (r < n), half of the dims each.
    const uint32_t r = lane & 15u, part = lane >> 4;
    const bool valid = r < n;
    uint32_t slot = 0;
    const bool coded = valid && v.coded_slot(j0 + r, &slot) && !RawOnly;
    float x[QC];
#pragma unroll
    for (int c = 0; c < QC; ++c) x[c] = 0.0f;
    if (coded) {
        const uint8_t *kc = v.k_codes(h, slot);
        const uint64_t pm = e8_parity_mask(kb);
        uint64_t codes[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) codes[q] = load_group(kc, 8 * part + (uint32_t)q, kb);
        const float skv = bf16_to_f32(v.k_scales(h)[slot]);
#pragma unroll
        for (int q = 0; q < 8; ++q) {
            const uint32_t gi = 8 * part + (uint32_t)q;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float qv = group_value(codes[q], (uint32_t)i, kb, e8, pm);
#pragma unroll
                for (int c = 0; c < QC; ++c) x[c] += sm.qrot[c * D + 8 * gi + i] * qv;
            }
        }
#pragma unroll
        for (int c = 0; c < QC; ++c) x[c] *= skv;
    } else if (valid) {
        const uint16_t *kr = v.k_raw(h, slot) + 64 * part;
        uint4 u[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) u[q] = ld16(kr + 8 * q);  // rows are 16-byte aligned in aligned images
#pragma unroll
        for (int q = 0; q < 8; ++q) {
            const uint32_t wq[4] = {u[q].x, u[q].y, u[q].z, u[q].w};
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float kx = f16f(i & 1 ? wq[i >> 1] >> 16 : wq[i >> 1] & 0xffffu);
#pragma unroll
                for (int c = 0; c < QC; ++c) x[c] += sm.qorig[c * D + 64 * part + 8 * q + i] * kx;
            }
        }
    }
#pragma unroll
    for (int c = 0; c < QC; ++c) x[c] += __shfl_xor_sync(0xffffffffu, x[c], 16) + (coded ? kbias[c] : 0.0f);
    if (valid && part == 0)
#pragma unroll
        for (int c = 0; c < QC; ++c) xs[r * QC + c] = x[c];
    const uint32_t valid_mask = __ballot_sync(0xffffffffu, valid && part == 0);
    const uint32_t raw_mask = __ballot_sync(0xffffffffu, valid && !coded && part == 0);
    __syncwarp();
    bool vis[4];
    mma_visible<QC>(P, v, h, j0, valid_mask, seq, lane, vis);
    float xl[4], p[4], sv[4];
    uint32_t vslot[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t r = 2 * t + (k & 1) + 8 * (k >> 1);
        xl[k] = vis[k] ? mma_logit(P, xs[r * QC + (g < (uint32_t)QC ? g : 0u)]) : 0.0f;
        sv[k] = 0.0f;
        vslot[k] = 0xffffffffu;
        uint32_t s;
        if (!RawOnly && (((valid_mask & ~raw_mask) >> r) & 1u)) {
            (void)v.coded_slot(j0 + r, &s);
            vslot[k] = s;
            sv[k] = bf16_to_f32(v.v_scales(h)[s]);
        }
    }
    if (raw_mask) st.has_raw = true;
    mma_softmax<QC>(st, xl, vis, p, mv.racc, corr_sm, lane);
    // Raw tokens' weights for the original-domain sums.
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t r = 2 * t + (k & 1) + 8 * (k >> 1);
        if (((raw_mask >> r) & 1u) && g < (uint32_t)QC) pw[r * QC + g] = p[k];
    }
    if constexpr (!RawOnly) {
        const uint32_t b0 = f16x2(p[0] * sv[0] * vmul, p[1] * sv[1] * vmul);
        const uint32_t b1 = f16x2(p[2] * sv[2] * vmul, p[3] * sv[3] * vmul);
        // Coded values: groups 2g and 2g+1 of the 4 tokens, decoded one coordinate at a time.
        uint64_t code[4][2];
        const uint64_t vpm = e8_parity_mask(vb);
#pragma unroll
        for (int k = 0; k < 4; ++k)
#pragma unroll
            for (int q = 0; q < 2; ++q)
                code[k][q] = vslot[k] != 0xffffffffu ? load_group(v.v_codes(h, vslot[k]), 2 * g + q, vb) : 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            float val[4][2];
#pragma unroll
            for (int k = 0; k < 4; ++k)
#pragma unroll
                for (int q = 0; q < 2; ++q)
                    val[k][q] = vslot[k] != 0xffffffffu ? group_value(code[k][q], (uint32_t)i, vb, e8, vpm) : 0.0f;
            mma_f16(st.acc[i], f16x2(val[0][0], val[1][0]), f16x2(val[0][1], val[1][1]), f16x2(val[2][0], val[3][0]),
                    f16x2(val[2][1], val[3][1]), b0, b1);
        }
    }
    // Raw values, original domain: lane owns dims 4 lane .. 4 lane + 3; every row's
    // 8 bytes loaded before the first use.
    if (raw_mask) {
        __syncwarp();
        uint2 vals[16];
#pragma unroll
        for (int rr = 0; rr < 16; ++rr) {
            vals[rr] = make_uint2(0u, 0u);
            if ((raw_mask >> rr) & 1u) {
                uint32_t rs;
                (void)v.coded_slot(j0 + (uint32_t)rr, &rs);
                vals[rr] = *reinterpret_cast<const uint2 *>(v.v_raw(h, rs) + 4 * lane);
            }
        }
        float ra[QC][4];
#pragma unroll
        for (int c = 0; c < QC; ++c)
#pragma unroll
            for (int e = 0; e < 4; ++e) ra[c][e] = 0.0f;
#pragma unroll
        for (int rr = 0; rr < 16; ++rr) {
            if (!((raw_mask >> rr) & 1u)) continue;
            const float y[4] = {f16f(vals[rr].x & 0xffffu), f16f(vals[rr].x >> 16), f16f(vals[rr].y & 0xffffu),
                                f16f(vals[rr].y >> 16)};
#pragma unroll
            for (int c = 0; c < QC; ++c) {
                const float w = pw[rr * QC + c];
#pragma unroll
                for (int e = 0; e < 4; ++e) ra[c][e] += w * y[e];
            }
        }
#pragma unroll
        for (int c = 0; c < QC; ++c)
#pragma unroll
            for (int e = 0; e < 4; ++e) mv.racc[c * D + 4 * lane + e] += ra[c][e];
    }
    __syncwarp();
}

// One pass of the tensor-core path over the CTA's tokens [t_begin, t_end): leaves the
// warp's max, sum and rotated-domain value sums in sm.cm / sm.cl / sm.cacc[warp] as the
// CUDA-core path does. Every query of the KV head is in this pass (nq <= QC <= 8).
template <int QC>
__device__ void mma_pass(const AttnParams &P, Smem<4, QC> &sm, float *misc, uint32_t seq, uint32_t kvh, uint32_t b0,
                         uint32_t b1, uint64_t base0, uint64_t t_begin, uint64_t t_end, uint32_t warp, uint32_t lane,
                         float vmul) {
    constexpr uint32_t D = 128;
    const uint32_t g = lane >> 2, t = lane & 3u;
    MmaView<QC> mv;
    mv.qf = &sm.vbuf[0][0][0];
    mv.xs = &sm.pv[0][0];
    mv.pw = nullptr;
    mv.racc = sm.cacc[warp];
    float *corr_sm = misc + 8 + 8 * warp;
    const float qinv = g < (uint32_t)QC ? misc[g] : 0.0f;
    MmaState st;
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) st.acc[i][e] = 0.0f;
    st.m = -INFINITY;
    st.l = 0.0f;
    st.has_raw = false;

    // Two sweeps over the blocks: coded tokens first, then the raw sinks and windows. A
    // warp's raw value sums (shared memory) must be rescaled whenever its running max
    // moves; after the coded tokens it rarely does.
    uint32_t tile = 0;
#pragma unroll 1
    for (int sweep = 0; sweep < 2; ++sweep) {
        uint64_t base = base0;  // kept tokens before block b0
        for (uint32_t b = b0; b < b1 && base < t_end; ++b) {
            const uint8_t *img = static_cast<const uint8_t *>(P.images[b]);
            const uint32_t kept = BlockView::rd32(img + 36);
            const uint64_t lo = std::max<uint64_t>(base, t_begin), hi = std::min<uint64_t>(base + kept, t_end);
            if (lo < hi) {
                const BlockView v = BlockView::of(img);
                const bool fast_blk = v.codec == kCodecE8 && v.k_bits == 3 && v.v_bits == 2;
                float kbq[QC];  // logit offsets of a key-centred block, per query (raw keys have none)
                if (sweep == 0) {
                    key_mean_bias<QC>(sm.qrot, v, kvh, D, lane, kbq);
                } else {
#pragma unroll
                    for (int c = 0; c < QC; ++c) kbq[c] = 0.0f;
                }
                NQ_TRACE(9);
                float kbg = 0.0f;  // this thread's query g
#pragma unroll
                for (int c = 0; c < QC; ++c)
                    if ((uint32_t)c == g) kbg = kbq[c];
                const uint32_t jlo = (uint32_t)(lo - base), jhi = (uint32_t)(hi - base);
                const uint32_t cs = v.fp16_sinks, ce = kept - v.fp16_window;
                // Sinks, coded tokens, window: tiles start at each region's start.
                const uint32_t edges[4] = {jlo, std::min(std::max(jlo, cs), jhi), std::min(std::max(jlo, ce), jhi), jhi};
                // The raw rows the second sweep reads, into L2 while the coded tokens run
                // (one warp; a K and a V row are two 128-byte lines each).
                if (sweep == 0 && warp == kAttnWarps - 1)
                    for (int region = 0; region < 3; region += 2)
                        for (uint32_t i = lane; i < 4 * (edges[region + 1] - edges[region]); i += 32) {
                            uint32_t rs;
                            (void)v.coded_slot(edges[region] + i / 4, &rs);
                            const uint16_t *row = (i & 2u) ? v.v_raw(kvh, rs) : v.k_raw(kvh, rs);
                            prefetch_l2(row + 64 * (i & 1u));
                        }
    #pragma unroll 1
                for (int region = 0; region < 3; ++region) {
                    if ((region == 1) != (sweep == 0)) continue;
                    const uint32_t ra = edges[region], rb = std::max(edges[region], edges[region + 1]);
                    const uint32_t ntiles = (rb - ra + kMmaTile - 1) / kMmaTile;
                    // This warp's tiles: k = k0, k0 + 4, ... (tiles are dealt round-robin).
                    uint32_t k = (warp + kAttnWarps - tile % kAttnWarps) % kAttnWarps;
                    auto tile_n = [&](uint32_t kt) { return rb - ra - kt * kMmaTile < kMmaTile ? rb - ra - kt * kMmaTile : kMmaTile; };
                    if (region == 1 && fast_blk) {
                        if (k < ntiles) {
                            FastLoads cur;
                            mma_fast_load(cur, v, kvh, ra + k * kMmaTile, tile_n(k), lane);
                            for (; k < ntiles; k += kAttnWarps) {
                                FastLoads nxt = cur;
                                const uint32_t kn = k + kAttnWarps;
                                if (kn < ntiles) mma_fast_load(nxt, v, kvh, ra + kn * kMmaTile, tile_n(kn), lane);
                                mma_fast_tile<QC>(P, mv, corr_sm, st, cur, v, kvh, ra + k * kMmaTile, tile_n(k), seq, lane,
                                                  qinv, kbg, vmul);
                                NQ_TRACE(10);
                                cur = nxt;
                            }
                        }
                    } else {
                        for (; k < ntiles; k += kAttnWarps) {
                            if (region == 1)
                                mma_slow_tile<QC, false>(P, sm, mv, corr_sm, st, v, kvh, ra + k * kMmaTile, tile_n(k), seq,
                                                         warp, lane, kbq, vmul);
                            else
                                mma_slow_tile<QC, true>(P, sm, mv, corr_sm, st, v, kvh, ra + k * kMmaTile, tile_n(k), seq,
                                                        warp, lane, kbq, vmul);
                        }
                    }
                    tile += ntiles;
                }
            }
            base += kept;
        }
        NQ_TRACE(11 + sweep);
    }

    // Raw sums rotated forward, then the coded sums added (back to real units).
    if (st.has_raw) {
        __syncwarp();
        for (uint32_t k = lane; k < QC * D; k += 32)
            if (hadamard_sign_negative(k % D)) sm.cacc[warp][k] = -sm.cacc[warp][k];
        __syncwarp();
        fwht_shared(sm.cacc[warp], QC, D, D, lane, 32, [] { __syncwarp(); });
    }
    __syncwarp();
    float l = st.l;
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (t == 0 && g < (uint32_t)QC) {
        sm.cm[warp][g] = st.m;
        sm.cl[warp][g] = l;
    }
    // Thread (g, t) holds dims 16g .. 16g + 15 of queries 2t and 2t + 1: written as four
    // 16-byte chunks per query, chunk (s + t) mod 4 at step s, so that the 8 threads of
    // a store phase hit 8 different bank groups.
    const float inv_vmul = 1.0f / vmul;
#pragma unroll
    for (int ep = 0; ep < 2; ++ep) {
        const uint32_t c = 2 * t + (uint32_t)ep;
        if (c >= (uint32_t)QC) continue;
        float4 ch[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int e = 2 * (q >> 1) + ep, i0 = 4 * (q & 1);
            ch[q] = make_float4(st.acc[i0][e] * inv_vmul, st.acc[i0 + 1][e] * inv_vmul, st.acc[i0 + 2][e] * inv_vmul,
                                st.acc[i0 + 3][e] * inv_vmul);
        }
#pragma unroll
        for (uint32_t s = 0; s < 4; ++s) {
            const uint32_t q = (s + t) & 3u;
            const float4 x = q == 0 ? ch[0] : q == 1 ? ch[1] : q == 2 ? ch[2] : ch[3];
            float4 *dst = reinterpret_cast<float4 *>(&sm.cacc[warp][c * D + 16 * g + 4 * q]);
            if (st.has_raw) {
                const float4 y = *dst;
                *dst = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
            } else {
                *dst = x;
            }
        }
    }
}

// Query fragments of the pass from sm.qrot (rotated, scaled): per query a power of two
// f brings the largest element to [2^13, 2^14); hi = fp16(x f), lo = fp16(x f - hi);
// misc[g] = 1 / f. Run by one warp.
template <int QC> __device__ void mma_query_fragments(const AttnParams &P, Smem<4, QC> &sm, float *misc, uint32_t lane) {
    constexpr uint32_t D = 128;
    const uint32_t g = lane >> 2, t = lane & 3u;
    const bool ok = g < (uint32_t)QC && g < P.nq;
    const float *q = sm.qrot + (ok ? g : 0u) * D;
    float amax = 0.0f;
    if (ok)
        for (uint32_t d = 32 * t; d < 32 * t + 32; ++d) amax = fmaxf(amax, fabsf(q[d]));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    int eb = 127;
    if (amax > 0.0f) eb = 267 - (int)((__float_as_uint(amax) >> 23) & 0xffu);
    eb = eb < 1 ? 1 : (eb > 254 ? 254 : eb);
    const float f = __uint_as_float((uint32_t)eb << 23);
    if (t == 0 && g < (uint32_t)QC) misc[g] = 1.0f / f;
    uint4 *qf = &sm.vbuf[0][0][0];
#pragma unroll
    for (int s = 0; s < 8; ++s) {
        const uint32_t G = 4 * t + (uint32_t)(s >> 1), i0 = 8 * G + 2 * (uint32_t)(s & 1);
        uint32_t r[4];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const uint32_t i = i0 + (uint32_t)half;  // pair (i, i + 4)
            const float a = ok ? q[i] * f : 0.0f, b = ok ? q[i + 4] * f : 0.0f;
            const uint32_t hi = f16x2(a, b);
            const uint32_t lo = f16x2(a - f16f(hi & 0xffffu), b - f16f(hi >> 16));
            r[2 * half] = hi;      // rows 0-7: a0a1 (cols 2t..), a4a5 (cols 2t+8..)
            r[2 * half + 1] = lo;  // rows 8-15
        }
        // Register order {a0a1, a2a3, a4a5, a6a7} = {hi pair 0, lo pair 0, hi pair 1, lo pair 1}.
        qf[s * 32 + lane] = make_uint4(r[0], r[1], r[2], r[3]);
    }
}
#endif  // NQ_ATTN_MMA

// One pass of the CUDA-core path: leaves each warp's max, sum and rotated-domain value
// sums in sm.cm / sm.cl / sm.cacc[warp]. Not inlined: the tensor-core path of the same
// kernel keeps its own register allocation.
template <int NDL, int QC, int FD, int RM>
__device__ NQ_ATTN_NOINLINE void cuda_core_pass(const AttnParams &P, Smem<NDL, QC> &sm, uint32_t seq, uint32_t kvh,
                                            uint32_t b0, uint32_t b1, uint64_t base0, uint64_t t_begin,
                                            uint64_t t_end, uint32_t qc0, uint32_t warp, uint32_t lane) {
    const uint32_t D = FD ? (uint32_t)FD : P.D;
    const uint32_t nblk = hadamard_block(D);
        constexpr int AV = acc_width<NDL, FD>();
        WarpState<AV, QC> st;
#pragma unroll
        for (int c = 0; c < QC; ++c) {
            st.m[c] = -INFINITY;
            st.l[c] = 0.0f;
#pragma unroll
            for (int k = 0; k < AV; ++k) st.acc[c][k] = 0.0f;
        }
        st.has_raw = false;
        for (uint32_t k = lane; k < QC * D; k += 32) sm.cacc[warp][k] = 0.0f;
        __syncwarp();

        // Walk the blocks that overlap [t_begin, t_end); 32-token chunks go to the warps
        // in turn.
        uint64_t base = base0;  // kept tokens before block b0
        uint32_t chunk = 0;
        for (uint32_t b = b0; b < b1 && base < t_end; ++b) {
            const uint8_t *img = static_cast<const uint8_t *>(P.images[b]);
            const uint32_t kept = BlockView::rd32(img + 36);
            const uint64_t lo = std::max<uint64_t>(base, t_begin), hi = std::min<uint64_t>(base + kept, t_end);
            if (lo < hi) {
                const BlockView v = BlockView::of(img);
                const bool fast_bits = FD == 128 && v.codec == kCodecE8 && v.k_bits == 3 && v.v_bits == 2 &&
                                       ((uintptr_t)img & 15u) == 0;
                float kbias[QC];  // logit offsets of a key-centred block, once per block
                key_mean_bias<QC>(sm.qrot, v, kvh, D, lane, kbias);
                for (uint64_t c0 = lo; c0 < hi; c0 += 32, ++chunk) {
                    if (chunk % kAttnWarps != warp) continue;
                    const uint32_t j0 = (uint32_t)(c0 - base), n = (uint32_t)std::min<uint64_t>(32, hi - c0);
                    if constexpr (FD == 128) {
                        if (fast_bits) {
                            attend_chunk<NDL, QC, FD, 3, 2, RM>(P, sm, st, v, kvh, j0, n, seq, qc0, warp, lane, kbias);
                            continue;
                        }
                    }
                    attend_chunk<NDL, QC, FD, 0, 0, RM>(P, sm, st, v, kvh, j0, n, seq, qc0, warp, lane, kbias);
                }
            }
            base += kept;
        }

        // Merge the warps: raw sums rotated forward (y = H S v), plus the rotated sums.
        if (st.has_raw) {
            __syncwarp();
            for (uint32_t k = lane; k < QC * D; k += 32)
                if (hadamard_sign_negative(k % D)) sm.cacc[warp][k] = -sm.cacc[warp][k];
            __syncwarp();
            fwht_shared(sm.cacc[warp], QC, D, nblk, lane, 32, [] { __syncwarp(); });
        }
        __syncwarp();
#pragma unroll
        for (int c = 0; c < QC; ++c) {
            const float l = warp_sum(st.l[c]);
            if (lane == 0) {
                sm.cm[warp][c] = st.m[c];
                sm.cl[warp][c] = l;
            }
            if constexpr (FD == 128) {
                // The two half-warps hold sums over different tokens of the same dims.
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const float a = st.acc[c][i] + __shfl_xor_sync(0xffffffffu, st.acc[c][i], 16, 32);
                    if (lane < 16) sm.cacc[warp][c * D + 8 * lane + i] += a;
                }
            } else {
#pragma unroll
                for (int k = 0; k < NDL; ++k)
                    if (lane * NDL + k < D) sm.cacc[warp][c * D + lane * NDL + k] += st.acc[c][k];
            }
        }
}

// A CTA's share of its sequence's kept tokens (every head keeps as many).
struct SeqShare {
    uint64_t total;             // kept tokens of the sequence
    uint64_t eff;               // splits that hold tokens (the others hand in empty partials)
    uint64_t t_begin, t_end;    // this split's tokens
    uint32_t b_first;           // the block holding token t_begin (b1 when the share is empty)
    uint64_t base;              // kept tokens before b_first
    bool mma;                   // every block can take the tensor-core path
    float vmul;                 // 2^-E, E the exponent of the sequence's first value scale
};

__device__ __forceinline__ uint64_t warp_sum_u64(uint64_t v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Every thread reads a block header of its own (128 blocks at a time), so the walk costs
// a few load latencies instead of a chain of them per block. Call with the whole CTA.
__device__ SeqShare seq_share(const AttnParams &P, uint32_t b0, uint32_t b1, uint32_t split, uint32_t kvh,
                              uint32_t tid, bool want_mma) {
    __shared__ unsigned long long s_sum[kAttnWarps];
    __shared__ uint32_t s_ok[kAttnWarps], s_first;
    __shared__ unsigned long long s_base;
    __shared__ float s_vmul;
    const uint32_t warp = tid >> 5, lane = tid & 31u;
    uint64_t mine = 0;
    bool ok = true;
    if (tid == 0) s_vmul = 1.0f;
    for (uint32_t b = b0 + tid; b < b1; b += kAttnThreads) {
        const uint8_t *img = static_cast<const uint8_t *>(P.images[b]);
        mine += BlockView::rd32(img + 36);
        // Blocks with RoPE removed (keys rotated per position) take the CUDA-core path.
        if (img[22] == NQ_ROPE_REMOVE || BlockView::rd16(img + 16) != 128 || !aligned16(img)) ok = false;
        if (b == b0 && want_mma) {
            const BlockView v0 = BlockView::of(img);
            if (v0.coded) {
                const uint32_t eb = (uint32_t)v0.v_scales(kvh)[0] >> 7 & 0xffu;
                if (eb > 0 && eb < 255) s_vmul = __uint_as_float((254u - eb < 1u ? 1u : 254u - eb) << 23);
            }
        }
    }
    mine = warp_sum_u64(mine);
    const uint32_t all_ok = warp_or(ok ? 0u : 1u) == 0u;
    if (lane == 0) {
        s_sum[warp] = mine;
        s_ok[warp] = all_ok;
    }
    if (tid == 0) {
        s_first = b1;
        s_base = 0;
    }
    __syncthreads();
    SeqShare r;
    r.total = 0;
    r.mma = want_mma;
    for (uint32_t w = 0; w < kAttnWarps; ++w) {
        r.total += s_sum[w];
        r.mma = r.mma && s_ok[w];
    }
    r.vmul = r.mma ? s_vmul : 1.0f;
    // Short sequences use fewer splits (at least kMinSplitTokens each).
    r.eff = std::max<uint64_t>(1, std::min<uint64_t>(P.splits, (r.total + kMinSplitTokens - 1) / kMinSplitTokens));
    r.t_begin = split < r.eff ? r.total * split / r.eff : r.total;
    r.t_end = split < r.eff ? r.total * (split + 1) / r.eff : r.total;
    if (tid == 0) s_base = r.total;
    __syncthreads();  // s_sum is reused below

    // The block holding t_begin: an inclusive scan of kept counts, 128 blocks at a time.
    uint64_t chunk_base = 0;
    for (uint32_t c0 = b0; c0 < b1 && r.t_begin < r.total; c0 += kAttnThreads) {
        const uint32_t b = c0 + tid;
        const uint64_t kept = b < b1 ? BlockView::rd32(static_cast<const uint8_t *>(P.images[b]) + 36) : 0;
        uint64_t incl = kept;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const uint64_t y = __shfl_sync(0xffffffffu, incl, (int)(lane >= (uint32_t)o ? lane - o : lane));
            if (lane >= (uint32_t)o) incl += y;
        }
        if (lane == 31) s_sum[warp] = incl;
        __syncthreads();
        uint64_t before = chunk_base, chunk_total = 0;
        for (uint32_t w = 0; w < kAttnWarps; ++w) {
            if (w < warp) before += s_sum[w];
            chunk_total += s_sum[w];
        }
        const uint64_t excl = before + incl - kept;
        if (kept > 0 && excl <= r.t_begin && r.t_begin < excl + kept) {  // exactly one thread
            s_first = b;
            s_base = excl;
        }
        chunk_base += chunk_total;
        __syncthreads();
        if (chunk_base > r.t_begin) break;  // CTA-uniform
    }
    r.b_first = s_first;
    r.base = s_base;
    __syncthreads();  // the shared results are read before any other use of the CTA's shared memory
    return r;
}

// o[c][d] = sum over the splits of w[c][s] * part_acc[s][c][d]. With head_dim known at
// compile time each thread owns E consecutive elements (16-byte loads when E is a
// multiple of 4) and keeps U splits' loads in flight: the merge is on the critical path
// (it runs after every other CTA), and each round of loads costs an L2 round trip.
template <int QC, int FD>
__device__ __forceinline__ void merge_split_sums(const AttnParams &P, const float (*w)[kMaxAttentionSplits], float *o,
                                                 size_t part0, uint32_t S, uint32_t qc0, uint32_t tid) {
    const uint32_t D = FD ? (uint32_t)FD : P.D;
    const size_t step = (size_t)P.nq * D;
    constexpr uint32_t E = FD ? (uint32_t)(QC * FD) / kAttnThreads : 0u;
    if constexpr (E >= 1 && E * kAttnThreads == (uint32_t)(QC * FD) && FD % (E ? E : 1u) == 0) {
        const uint32_t k0 = tid * E, c = k0 / D, d0 = k0 - c * D, qi = qc0 + c;
        float a[E];
#pragma unroll
        for (uint32_t e = 0; e < E; ++e) a[e] = 0.0f;
        if (qi < P.nq) {
            constexpr uint32_t U = E >= 8 ? 8u : 16u;  // U * E floats of loads in flight per thread
            const float *src = P.part_acc + (part0 * P.nq + qi) * D + d0;
            for (uint32_t s0 = 0; s0 < S; s0 += U) {
                float x[U][E];
#pragma unroll
                for (uint32_t u = 0; u < U; ++u) {
                    if (s0 + u < S) {
                        if constexpr (E % 4 == 0) {
#pragma unroll
                            for (uint32_t e = 0; e < E; e += 4) ld_partial4(src + (s0 + u) * step + e, &x[u][e]);
                        } else {
#pragma unroll
                            for (uint32_t e = 0; e < E; ++e) x[u][e] = ld_partial(src + (s0 + u) * step + e);
                        }
                    } else {
#pragma unroll
                        for (uint32_t e = 0; e < E; ++e) x[u][e] = 0.0f;
                    }
                }
#pragma unroll
                for (uint32_t u = 0; u < U; ++u) {
                    const float wt = s0 + u < S ? w[c][s0 + u] : 0.0f;
#pragma unroll
                    for (uint32_t e = 0; e < E; ++e) a[e] += wt * x[u][e];
                }
            }
        }
#pragma unroll
        for (uint32_t e = 0; e < E; ++e) o[k0 + e] = a[e];
    } else {
        for (uint32_t k = tid; k < QC * D; k += kAttnThreads) {
            const uint32_t c = k / D, d = k - c * D, qi = qc0 + c;
            float a = 0.0f;
            if (qi < P.nq) {
                const float *src = P.part_acc + (part0 * P.nq + qi) * D + d;
#pragma unroll 8
                for (uint32_t sp = 0; sp < S; ++sp) a += w[c][sp] * ld_partial(src + sp * step);
            }
            o[k] = a;
        }
    }
}

#if defined(NQ_ATTN_MMA)
// While the queries load and rotate (several microseconds of latency), the first block's
// key mean and the first coded tiles of the split (scales and codes, about 4 tiles) go
// into L2: the pass then starts on L2 hits instead of DRAM misses.
__device__ __forceinline__ void mma_prefetch_first(const AttnParams &P, const SeqShare &share, uint32_t h,
                                                   uint32_t tid) {
    const BlockView v = BlockView::of(P.images[share.b_first]);
    const uint32_t jlo = (uint32_t)(share.t_begin - share.base);
    const uint32_t s0 = jlo > v.fp16_sinks ? jlo - v.fp16_sinks : 0u;  // first coded slot of the split
    if (s0 >= v.coded) return;
    constexpr uint32_t kTokens = 4 * kMmaTile, kLine = 128;
    const uint32_t n = min(kTokens, v.coded - s0);
    const uint32_t kc = n * v.k_code_bytes, vc = n * v.v_code_bytes;
    const uint32_t kl = (kc + kLine - 1) / kLine, vl = (vc + kLine - 1) / kLine;
    const uint8_t *p = nullptr;
    if (tid < kl) p = v.k_codes(h, s0) + tid * kLine;
    else if (tid < kl + vl) p = v.v_codes(h, s0) + (tid - kl) * kLine;
    else if (tid == kl + vl) p = reinterpret_cast<const uint8_t *>(v.k_scales(h) + s0);
    else if (tid == kl + vl + 1) p = reinterpret_cast<const uint8_t *>(v.v_scales(h) + s0);
    else if (tid < kl + vl + 4 && v.key_mean()) p = reinterpret_cast<const uint8_t *>(v.k_mean(h)) + (tid - kl - vl - 2) * kLine;
    if (p) prefetch_l2(p);
}
#endif

// RM: built for blocks with RoPE removed (head_dim 128): each lane holds a whole key in
// registers, so two CTAs per multiprocessor (255 registers a thread; built for 3 or 4
// with spills it ran 1.14-1.45x slower on an H200); no tensor-core path.
template <int NDL, int QC, int FD, int RM>
__global__ void __launch_bounds__(kAttnThreads, (QC >= 8 || RM) ? 2 : 4) attention_kernel(const NQ_GRID_CONSTANT AttnParams P) {
    __shared__ Smem<NDL, QC> sm;
    NQ_TRACE(0);
    // Heads vary fastest in launch order, so a short sequence's working splits (the first
    // eff) are spread over the multiprocessors instead of stacked on the same few.
    const uint32_t kvh = blockIdx.x, split = blockIdx.y, seq = blockIdx.z;
    const uint32_t tid = threadIdx.x, warp = tid >> 5, lane = tid & 31u;
    const uint32_t D = FD ? (uint32_t)FD : P.D;
    const uint32_t nblk = hadamard_block(D);
    const float qrot_scale = P.scale / (float)nblk;

    // The sequence's kept tokens (every head keeps as many), this split's share, and the
    // first block of that share. The headers are read by all threads at once (a walk
    // by one thread is a chain of dependent loads per block: ~1 us each at 128K tokens).
    const uint32_t b0 = P.indptr[seq], b1 = P.indptr[seq + 1];
    bool use_mma = false;  // CTA-uniform
#if defined(NQ_ATTN_MMA)
    __shared__ float mma_misc[8 + 8 * kAttnWarps];  // 1 / query factor; per-warp rescale factors
    if constexpr (NDL == 4 && FD == 128 && !RM) use_mma = P.mma != 0 && P.nq <= (uint32_t)QC;
#endif
    const SeqShare share = seq_share(P, b0, b1, split, kvh, tid, use_mma);
    NQ_TRACE(1);
    use_mma = share.mma;
    const uint64_t eff = share.eff, t_begin = share.t_begin, t_end = share.t_end;
    const float vmul = share.vmul;  // 2^-E: E the exponent of the sequence's first value scale

    // A split past eff holds no tokens (a short sequence): it only arrives at the counter
    // below (the merge reads eff splits), leaving the multiprocessor to the others.
#if defined(NQ_ATTN_MMA)
    if constexpr (NDL == 4 && FD == 128 && !RM)
        if (use_mma && split < eff && share.b_first < b1) mma_prefetch_first(P, share, kvh, tid);
#endif
    for (uint32_t qc0 = 0; split < eff && qc0 < P.nq; qc0 += QC) {
        // Queries of this pass, original and rotated.
        for (uint32_t k = tid; k < QC * D; k += kAttnThreads) {
            const uint32_t c = k / D, d = k - c * D, qi = qc0 + c;
            float val = 0.0f;
            if (qi < P.nq) {
                const uint32_t i = qi / P.group, hq = kvh * P.group + qi % P.group;
                val = load_elem(P.q, (int64_t)seq * P.q_seq + (int64_t)i * P.q_tok + (int64_t)hq * P.q_head + d,
                                P.dtype);
            }
            sm.qorig[k] = val * P.scale;
            sm.qrot[k] = hadamard_sign_negative(d) ? -val : val;
        }
        __syncthreads();
        NQ_TRACE(7);
        fwht_shared(sm.qrot, QC, D, nblk, tid, kAttnThreads, [] { __syncthreads(); });
        for (uint32_t k = tid; k < QC * D; k += kAttnThreads) sm.qrot[k] *= qrot_scale;
        __syncthreads();
        NQ_TRACE(8);

        bool mma_done = false;
#if defined(NQ_ATTN_MMA)
        if constexpr (NDL == 4 && FD == 128 && !RM) {
            if (use_mma) {
                for (uint32_t k = lane; k < QC * D; k += 32) sm.cacc[warp][k] = 0.0f;
                if (warp == 0) mma_query_fragments<QC>(P, sm, mma_misc, lane);
                __syncthreads();
                NQ_TRACE(2);
                mma_pass<QC>(P, sm, mma_misc, seq, kvh, share.b_first, b1, share.base, t_begin, t_end, warp, lane, vmul);
                mma_done = true;
            }
        }
#endif
        if (!mma_done) {
            cuda_core_pass<NDL, QC, FD, RM>(P, sm, seq, kvh, share.b_first, b1, share.base, t_begin, t_end, qc0, warp, lane);
        }  // !mma_done
        NQ_TRACE(3);
        __syncthreads();
        if (tid < QC) {
            float M = -INFINITY, L = 0.0f;
            for (uint32_t w = 0; w < kAttnWarps; ++w) M = fmaxf(M, sm.cm[w][tid]);
            if (M != -INFINITY)
                for (uint32_t w = 0; w < kAttnWarps; ++w) L += sm.cl[w][tid] * exp2f(sm.cm[w][tid] - M);
            sm.fm[tid] = M;
            sm.fl[tid] = L;
        }
        __syncthreads();
        float *o = sm.cacc[0];
        for (uint32_t k = tid; k < QC * D; k += kAttnThreads) {
            const uint32_t c = k / D;
            const float M = sm.fm[c];
            float a = 0.0f;
            if (M != -INFINITY)
                for (uint32_t w = 0; w < kAttnWarps; ++w) a += sm.cacc[w][k] * exp2f(sm.cm[w][c] - M);
            o[k] = a;
        }
        __syncthreads();
        if (P.splits == 1) {
            for (uint32_t k = tid; k < QC * D; k += kAttnThreads) {
                const float L = sm.fl[k / D];
                o[k] = L > 0.0f ? o[k] / L : 0.0f;
            }
            __syncthreads();
            write_output<NDL, QC>(P, sm, o, seq, kvh, qc0);
        } else {
            const size_t part = ((size_t)seq * P.kv_heads + kvh) * P.splits + split;
            for (uint32_t k = tid; k < QC * D; k += kAttnThreads) {
                const uint32_t c = k / D, qi = qc0 + c;
                if (qi < P.nq) P.part_acc[(part * P.nq + qi) * D + (k - c * D)] = o[k];
            }
            for (uint32_t c = tid; c < QC; c += kAttnThreads)
                if (qc0 + c < P.nq) {
                    P.part_ml[(part * P.nq + qc0 + c) * 2] = sm.fm[c];
                    P.part_ml[(part * P.nq + qc0 + c) * 2 + 1] = sm.fl[c];
                }
            __syncthreads();
        }
    }
    NQ_TRACE(4);
    if (P.splits == 1) return;

    // The last CTA of this (sequence, KV head) merges the splits.
    __threadfence();
    __syncthreads();
    uint32_t *counter = P.counters + (size_t)seq * P.kv_heads + kvh;
    if (tid == 0) sm.last = atomicAdd(counter, 1u) == P.splits - 1 ? 1u : 0u;
    __syncthreads();
    if (!sm.last) {
        NQ_TRACE(5);
        return;
    }
    __threadfence();
    const size_t part0 = ((size_t)seq * P.kv_heads + kvh) * P.splits;
    float *o = sm.cacc[0];
    const uint32_t S = (uint32_t)eff;  // the splits past eff hold no tokens
    for (uint32_t qc0 = 0; qc0 < P.nq; qc0 += QC) {
        // Every split's (m, l) at once; per query its max M and sum L by one warp; then
        // the weights exp2(m_s - M) / L.
        // (QC * S <= 8 * kMaxAttentionSplits = 8 rounds: all loads issued, then stored.)
        {
            constexpr uint32_t R = (uint32_t)QC * kMaxAttentionSplits / kAttnThreads;
            float m[R], l[R];
#pragma unroll
            for (uint32_t r = 0; r < R; ++r) {
                const uint32_t k = tid + r * kAttnThreads, c = k / S, sp = k - c * S, qi = qc0 + c;
                m[r] = -INFINITY, l[r] = 0.0f;
                if (k < QC * S && qi < P.nq) {
                    const float *ml = P.part_ml + ((part0 + sp) * P.nq + qi) * 2;
                    m[r] = ld_partial(ml);
                    l[r] = ld_partial(ml + 1);
                }
            }
#pragma unroll
            for (uint32_t r = 0; r < R; ++r) {
                const uint32_t k = tid + r * kAttnThreads, c = k / S, sp = k - c * S;
                if (k < QC * S) {
                    sm.sw[c][sp] = m[r];
                    sm.sl[c][sp] = l[r];
                }
            }
        }
        __syncthreads();
        for (uint32_t c = warp; c < (uint32_t)QC; c += kAttnWarps) {
            float M = -INFINITY, L = 0.0f;
            for (uint32_t sp = lane; sp < S; sp += 32) M = fmaxf(M, sm.sw[c][sp]);
            M = warp_max(M);
            if (M != -INFINITY)
                for (uint32_t sp = lane; sp < S; sp += 32) L += sm.sl[c][sp] * exp2f(sm.sw[c][sp] - M);
            L = warp_sum(L);
            if (lane == 0) {
                sm.fm[c] = M;
                sm.fl[c] = L;
            }
        }
        __syncthreads();
        for (uint32_t k = tid; k < QC * S; k += kAttnThreads) {
            const uint32_t c = k / S, sp = k - c * S;
            const float M = sm.fm[c], L = sm.fl[c], m = sm.sw[c][sp];
            sm.sw[c][sp] = (L > 0.0f && m != -INFINITY) ? exp2f(m - M) / L : 0.0f;
        }
        __syncthreads();
        merge_split_sums<QC, FD>(P, sm.sw, o, part0, S, qc0, tid);
        __syncthreads();
        write_output<NDL, QC>(P, sm, o, seq, kvh, qc0);
    }
    NQ_TRACE(6);
}

template <int NDL, int QC, int FD> cudaError_t launch(const AttnParams &p, cudaStream_t stream) {
    auto kern = attention_kernel<NDL, QC, FD, 0>;
    if constexpr (NDL == 4 && FD == 128)
        if (p.rope_reg) kern = attention_kernel<NDL, QC, FD, 1>;
    NQ_LAUNCH(kern, dim3(p.kv_heads, p.splits, p.num_seqs), dim3(kAttnThreads), stream, p);
    return cudaGetLastError();
}

// Queries per pass: 1, or enough to cover the group's queries (4 or 8), capped so that
// QC * NDL accumulators stay in registers. More queries take several passes.
template <int NDL, int FD> cudaError_t launch_qc(const AttnParams &p, cudaStream_t stream) {
    if (p.nq <= 1) return launch<NDL, 1, FD>(p, stream);
    if constexpr (NDL >= 16) {
        return launch<NDL, 2, FD>(p, stream);
    } else if constexpr (NDL >= 8) {
        return launch<NDL, 4, FD>(p, stream);
    } else {
        if (p.nq <= 4) return launch<NDL, 4, FD>(p, stream);
        return launch<NDL, 8, FD>(p, stream);
    }
}

cudaError_t run_attention(const AttnParams &p, cudaStream_t stream) {
    uint32_t per_lane = (p.D + 31) / 32, ndl = 1;
    while (ndl < per_lane) ndl <<= 1;
    switch (ndl) {
    case 1: return launch_qc<1, 0>(p, stream);
    case 2: return launch_qc<2, 0>(p, stream);
    case 4: return p.D == 128 ? launch_qc<4, 128>(p, stream) : launch_qc<4, 0>(p, stream);
    case 8: return launch_qc<8, 0>(p, stream);
    default: return launch_qc<16, 0>(p, stream);
    }
}

int sm_count(int device) {
    static std::atomic<int> cached[16];
    int n = device >= 0 && device < 16 ? cached[device].load(std::memory_order_relaxed) : 0;
    if (n <= 0) {
        n = 1;
        if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n < 1) {
            (void)cudaGetLastError();
            n = 1;
        }
        if (device >= 0 && device < 16) cached[device].store(n, std::memory_order_relaxed);
    }
    return n;
}

// NQ_ATTENTION_MMA=0 in the environment keeps every call on the CUDA-core kernel (for
// comparisons); read once.
bool attention_mma_enabled() {
    static const bool on = [] {
        const char *e = std::getenv("NQ_ATTENTION_MMA");
        return !(e && e[0] == '0');
    }();
    return on;
}

// NQ_ATTENTION_ROPE_REG=0 keeps RoPE-removed keys on the warp-per-key path (comparisons).
bool attention_rope_reg_enabled() {
    static const bool on = [] {
        const char *e = std::getenv("NQ_ATTENTION_ROPE_REG");
        return !(e && e[0] == '0');
    }();
    return on;
}

constexpr size_t kWsAlign = 256;
inline size_t ws_up(size_t x) { return (x + kWsAlign - 1) / kWsAlign * kWsAlign; }

}  // namespace
}  // namespace gpu

using namespace gpu;

#if defined(NQ_ATTN_TRACE) && !defined(NQ_GPU_SIM) && !defined(NQ_HIP) && !defined(__HIPCC__)
// The trace of the last launch: 8 stamps per CTA (0 when a phase was not reached).
size_t gpu_attention_trace(unsigned long long *dst, size_t max_ctas) {
    const size_t n = std::min<size_t>(max_ctas, kTraceCtas);
    if (cudaMemcpyFromSymbol(dst, g_attn_trace, n * kTraceStamps * sizeof(unsigned long long)) != cudaSuccess) return 0;
    return n;
}
void gpu_attention_trace_clear() {
    static unsigned long long zero[kTraceCtas][kTraceStamps];
    (void)cudaMemcpyToSymbol(g_attn_trace, zero, sizeof zero);
}
#endif

uint32_t gpu_attention_splits(const nq_context *ctx, uint32_t num_seqs, uint32_t kv_heads) {
    (void)ctx;
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) {
        (void)cudaGetLastError();
        device = 0;
    }
    // As many CTAs as fit the device at once (four per multiprocessor: 128 registers per
    // thread), rounded down so that the grid is one wave; at least one split.
    const uint64_t ctas = (uint64_t)(num_seqs ? num_seqs : 1) * (kv_heads ? kv_heads : 1);
    const uint64_t target = (uint64_t)sm_count(device) * 4;
    uint64_t s = target / ctas;
    return (uint32_t)std::min<uint64_t>(std::max<uint64_t>(s, 1), kMaxAttentionSplits);
}

size_t gpu_attention_workspace_bytes(const nq_context *ctx, const AttentionCall &call) {
    (void)ctx;
    if (call.num_splits <= 1) return 0;
    const size_t sh = (size_t)call.num_seqs * call.num_kv_heads;
    const size_t nq = (size_t)call.group * call.q_tokens;
    return ws_up(sh * sizeof(uint32_t)) + ws_up(sh * call.num_splits * nq * call.head_dim * sizeof(float)) +
           ws_up(sh * call.num_splits * nq * 2 * sizeof(float));
}

nq_status gpu_attention(nq_context *ctx, const AttentionCall &call, void *workspace, void *stream_v) {
    cudaStream_t stream = static_cast<cudaStream_t>(stream_v);
    if (call.num_seqs == 0) return NQ_OK;
    if (call.num_splits < 1 || call.num_splits > kMaxAttentionSplits)
        return fail(NQ_ERR_INVALID_ARGUMENT, "num_splits is %u: the %s backend takes 1..%u", call.num_splits,
                    kGpuName, kMaxAttentionSplits);
    if (call.num_seqs > 65535 || call.num_kv_heads > 65535)
        return fail(NQ_ERR_UNSUPPORTED, "num_seqs %u x %u KV heads: the %s backend takes at most 65535 of each",
                    call.num_seqs, call.num_kv_heads, kGpuName);
    if (call.head_dim > kMaxHeadDim || call.head_dim % 8)
        return fail(NQ_ERR_INVALID_ARGUMENT, "head_dim %u is not a multiple of 8 up to %u", call.head_dim, kMaxHeadDim);
    if (call.num_splits > 1 && !workspace)
        return fail(NQ_ERR_INVALID_ARGUMENT, "workspace is NULL: %u splits need %zu bytes", call.num_splits,
                    gpu_attention_workspace_bytes(ctx, call));
    if ((uintptr_t)workspace % kWsAlign)
        return fail(NQ_ERR_INVALID_ARGUMENT, "workspace must be %zu-byte aligned", kWsAlign);
    AttnParams p;
    std::memset(&p, 0, sizeof p);
    p.images = call.block_images;
    p.indptr = call.block_indptr;
    p.q = call.q;
    p.q_seq = call.q_stride_seq;
    p.q_tok = call.q_stride_token;
    p.q_head = call.q_stride_head;
    p.out = call.out;
    p.o_seq = call.out_stride_seq;
    p.o_tok = call.out_stride_token;
    p.o_head = call.out_stride_head;
    p.lse = call.lse;
    p.qpos = call.q_positions;
    p.scale = call.scale;
    p.softcap = call.softcap;
    p.window = call.window;
    p.splits = call.num_splits;
    p.num_seqs = call.num_seqs;
    p.q_tokens = call.q_tokens;
    p.D = call.head_dim;
    p.kv_heads = call.num_kv_heads;
    p.group = call.group;
    p.nq = call.group * call.q_tokens;
    p.dtype = (uint32_t)call.dtype;
    // Keys with RoPE removed are rotated back with the context's RoPE (as decode does).
    const RopeSpec &r = ctx->rope;
    p.rot = r.rotary_dims;
    p.pairing = r.pairing;
    double mscale = 1.0;
    if (r.rotary_dims >= 2 && r.rotary_dims <= kMaxHeadDim) rope_inv_freq(r, 0, p.inv_freq, &mscale);
    p.rope_m = (float)mscale;
    // Blocks made by a RoPE-removing context with every dim of head_dim 128 rotated take the
    // kernel that rebuilds keys in registers (other blocks still attend correctly there).
    if (ctx->cfg.rope.mode == NQ_ROPE_REMOVE && call.head_dim == 128 && r.rotary_dims == 128 &&
        attention_rope_reg_enabled() &&
        (r.pairing == kPairInterleaved || r.pairing == kPairSplitHalf)) {
        p.rope_reg = 1;
        for (uint32_t i = 0; i < 64; ++i) {
            p.freq_hi[i] = (float)p.inv_freq[i];
            p.freq_lo[i] = (float)(p.inv_freq[i] - (double)p.freq_hi[i]);
        }
    }
    // The tensor-core path rounds the operands to fp16 (the query in two parts, the
    // probabilities in one): for fp16/bf16 queries and outputs, not f32.
    p.mma = call.head_dim == 128 && call.dtype != NQ_DTYPE_F32 && attention_mma_enabled() ? 1u : 0u;
    if (call.num_splits > 1) {
        const size_t sh = (size_t)call.num_seqs * call.num_kv_heads;
        uint8_t *ws = static_cast<uint8_t *>(workspace);
        p.counters = reinterpret_cast<uint32_t *>(ws);
        p.part_acc = reinterpret_cast<float *>(ws + ws_up(sh * sizeof(uint32_t)));
        p.part_ml = reinterpret_cast<float *>(ws + ws_up(sh * sizeof(uint32_t)) +
                                              ws_up(sh * call.num_splits * p.nq * p.D * sizeof(float)));
        // The caller's workspace holds anything: the counters start at zero (a memset
        // node, ordered on the stream and captured with the kernel).
        cudaError_t e = cudaMemsetAsync(p.counters, 0, sh * sizeof(uint32_t), stream);
        if (e != cudaSuccess) return fail(NQ_ERR_DEVICE, "clearing the attention counters: %s", cudaGetErrorString(e));
    }
    cudaError_t e = run_attention(p, stream);
    if (e != cudaSuccess) return fail(NQ_ERR_DEVICE, "launching attention: %s (%d)", cudaGetErrorString(e), (int)e);
    return NQ_OK;
}

}  // namespace nq
