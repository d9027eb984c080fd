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

constexpr unsigned kAttnThreads = 128;
constexpr unsigned kAttnWarps = kAttnThreads / 32;
constexpr uint32_t kMaxFreq = kMaxHeadDim / 2;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
#if defined(NQ_GPU_SIM)
constexpr uint64_t kMinSplitTokens = 32;  // the stand-in's short test sequences still merge several splits
#else
constexpr uint64_t kMinSplitTokens = 256;  // 8 chunks: two per warp
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
    uint32_t reserved;
    double inv_freq[kMaxFreq];
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
    float row[kAttnWarps][DMAX];        // per warp: one key decoded with RoPE (mode REMOVE)
    float cm[kAttnWarps][QC], cl[kAttnWarps][QC];
    float cacc[kAttnWarps][QC * DMAX];  // per warp: raw value sums, then all sums; then the merged output
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

// One chunk of up to 32 consecutive kept tokens [j0, j0 + n) of head h of a block.
template <int NDL, int QC, int FD, int KB, int VB>
__device__ __forceinline__ void attend_chunk(const AttnParams &P, Smem<NDL, QC> &sm,
                                             WarpState<acc_width<NDL, FD>(), QC> &st,
                                             const BlockView &v, uint32_t h, uint32_t j0, uint32_t n, uint32_t seq,
                                             uint32_t qc0, uint32_t warp, uint32_t lane) {
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

    // Logits of coded keys against the rotated query, one token per lane.
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
        for (int c = 0; c < QC; ++c) x[c] = dot[c] * sk;
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

    // Keys with RoPE removed: the warp decodes them one at a time.
    uint32_t slow = warp_or(coded && removed ? 1u << lane : 0u);
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
            for (uint32_t d = lane; d < D; d += 32)
                row[d] = group_value(load_group(kc, d >> 3, kb), d & 7u, kb, e8, pm) * sk;
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

template <int NDL, int QC, int FD>
__global__ void __launch_bounds__(kAttnThreads, QC >= 8 ? 2 : 4) attention_kernel(const NQ_GRID_CONSTANT AttnParams P) {
    __shared__ Smem<NDL, QC> sm;
    const uint32_t split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
    const uint32_t tid = threadIdx.x, warp = tid >> 5, lane = tid & 31u;
    const uint32_t D = FD ? (uint32_t)FD : P.D;
    const uint32_t nblk = hadamard_block(D);
    const float qrot_scale = P.scale / (float)nblk;

    // The sequence's kept tokens (every head keeps as many) and this split's share.
    const uint32_t b0 = P.indptr[seq], b1 = P.indptr[seq + 1];
    uint64_t total = 0;
    for (uint32_t b = b0; b < b1; ++b) total += BlockView::rd32(static_cast<const uint8_t *>(P.images[b]) + 36);
    // Short sequences use fewer splits (at least kMinSplitTokens each): the CTAs past
    // them hand in empty partials, so the merge reads less.
    const uint64_t eff = std::max<uint64_t>(1, std::min<uint64_t>(P.splits, (total + kMinSplitTokens - 1) / kMinSplitTokens));
    const uint64_t t_begin = split < eff ? total * split / eff : total;
    const uint64_t t_end = split < eff ? total * (split + 1) / eff : total;

    for (uint32_t qc0 = 0; qc0 < P.nq; qc0 += QC) {
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
        fwht_shared(sm.qrot, QC, D, nblk, tid, kAttnThreads, [] { __syncthreads(); });
        for (uint32_t k = tid; k < QC * D; k += kAttnThreads) sm.qrot[k] *= qrot_scale;
        __syncthreads();

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
        uint64_t base = 0;
        uint32_t chunk = 0;
        for (uint32_t b = b0; b < b1 && base < t_end; ++b) {
            const uint8_t *img = static_cast<const uint8_t *>(P.images[b]);
            const uint32_t kept = BlockView::rd32(img + 36);
            const uint64_t lo = std::max<uint64_t>(base, t_begin), hi = std::min<uint64_t>(base + kept, t_end);
            if (lo < hi) {
                const BlockView v = BlockView::of(img);
                const bool fast_bits = FD == 128 && v.codec == kCodecE8 && v.k_bits == 3 && v.v_bits == 2 &&
                                       ((uintptr_t)img & 15u) == 0;
                for (uint64_t c0 = lo; c0 < hi; c0 += 32, ++chunk) {
                    if (chunk % kAttnWarps != warp) continue;
                    const uint32_t j0 = (uint32_t)(c0 - base), n = (uint32_t)std::min<uint64_t>(32, hi - c0);
                    if constexpr (FD == 128) {
                        if (fast_bits) {
                            attend_chunk<NDL, QC, FD, 3, 2>(P, sm, st, v, kvh, j0, n, seq, qc0, warp, lane);
                            continue;
                        }
                    }
                    attend_chunk<NDL, QC, FD, 0, 0>(P, sm, st, v, kvh, j0, n, seq, qc0, warp, lane);
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
    if (P.splits == 1) return;

    // The last CTA of this (sequence, KV head) merges the splits.
    __threadfence();
    __syncthreads();
    uint32_t *counter = P.counters + (size_t)seq * P.kv_heads + kvh;
    if (tid == 0) sm.last = atomicAdd(counter, 1u) == P.splits - 1 ? 1u : 0u;
    __syncthreads();
    if (!sm.last) return;
    __threadfence();
    const size_t part0 = ((size_t)seq * P.kv_heads + kvh) * P.splits;
    float *o = sm.cacc[0];
    const uint32_t S = P.splits;
    for (uint32_t qc0 = 0; qc0 < P.nq; qc0 += QC) {
        // Every split's (m, l) at once, then the weights exp2(m_s - M) / L.
        for (uint32_t k = tid; k < QC * S; k += kAttnThreads) {
            const uint32_t c = k / S, sp = k - c * S, qi = qc0 + c;
            float m = -INFINITY, l = 0.0f;
            if (qi < P.nq) {
                const float *ml = P.part_ml + ((part0 + sp) * P.nq + qi) * 2;
                m = ld_partial(ml);
                l = ld_partial(ml + 1);
            }
            sm.sw[c][sp] = m;
            sm.sl[c][sp] = l;
        }
        __syncthreads();
        if (tid < QC) {
            float M = -INFINITY, L = 0.0f;
            for (uint32_t sp = 0; sp < S; ++sp) M = fmaxf(M, sm.sw[tid][sp]);
            if (M != -INFINITY)
                for (uint32_t sp = 0; sp < S; ++sp) L += sm.sl[tid][sp] * exp2f(sm.sw[tid][sp] - M);
            sm.fm[tid] = M;
            sm.fl[tid] = L;
        }
        __syncthreads();
        for (uint32_t k = tid; k < QC * S; k += kAttnThreads) {
            const uint32_t c = k / S, sp = k - c * S;
            const float M = sm.fm[c], L = sm.fl[c], m = sm.sw[c][sp];
            sm.sw[c][sp] = (L > 0.0f && m != -INFINITY) ? exp2f(m - M) / L : 0.0f;
        }
        __syncthreads();
        for (uint32_t k = tid; k < QC * D; k += kAttnThreads) {
            const uint32_t c = k / D, d = k - c * D, qi = qc0 + c;
            float a = 0.0f;
            if (qi < P.nq) {
                const float *src = P.part_acc + (part0 * P.nq + qi) * D + d;
                const size_t step = (size_t)P.nq * D;
#pragma unroll 8
                for (uint32_t sp = 0; sp < S; ++sp) {
                    const float w = sm.sw[c][sp];
                    if (w != 0.0f) a += w * ld_partial(src + sp * step);
                }
            }
            o[k] = a;
        }
        __syncthreads();
        write_output<NDL, QC>(P, sm, o, seq, kvh, qc0);
    }
}

template <int NDL, int QC, int FD> cudaError_t launch(const AttnParams &p, cudaStream_t stream) {
    auto kern = attention_kernel<NDL, QC, FD>;
    NQ_LAUNCH(kern, dim3(p.splits, p.kv_heads, p.num_seqs), dim3(kAttnThreads), stream, p);
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

constexpr size_t kWsAlign = 256;
inline size_t ws_up(size_t x) { return (x + kWsAlign - 1) / kWsAlign * kWsAlign; }

}  // namespace
}  // namespace gpu

using namespace gpu;

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
