// Per-block K/V bit choice from measured distortion (bit_choice.h has the model).
#include "bit_choice.h"

#include <cmath>

#include "../core/kv_access.h"
#include "../backend.h"
#include "../core/nq_expf.h"
#include "../core/vector_codec.h"

namespace nq {
namespace {

constexpr uint32_t kSamplePerHead = 64;  // vectors per head whose error is measured

float dot(const float *a, const float *b, uint32_t n) {
    float s = 0.0f;
    for (uint32_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

void load_query(const nq_score_desc &sc, uint32_t qh, uint32_t i, uint32_t D, float *dst) {
    nq_layout l{};
    l.kind = NQ_LAYOUT_STRIDED;
    l.stride_head = sc.q_stride_head;
    l.stride_token = sc.q_stride_token;
    l.stride_dim = sc.q_stride_dim ? sc.q_stride_dim : 1;
    load_row(sc.queries, sc.query_dtype, l, qh, i, D, dst);
}

// Squared error and energy of x quantised at `bits` (codec `codec`), in the rotated
// domain (the rotation is orthogonal up to a constant, so the ratio is the same).
void quantisation_error(const float *x, uint32_t D, int codec, uint32_t bits, double *err, double *energy) {
    float y[kMaxHeadDim], q[kMaxHeadDim];
    uint8_t codes[kMaxHeadDim];
    for (uint32_t d = 0; d < D; ++d) y[d] = x[d];
    hadamard_forward(y, D);
    uint16_t s;
    if (!vector_scale(y, D, codec, (int)bits, &s)) return;  // inf/nan: encode reports it
    encode_rotated(y, D, codec, (int)bits, s, codes);
    decode_rotated(codes, D, codec, (int)bits, s, q);
    double e = 0.0, n = 0.0;
    for (uint32_t d = 0; d < D; ++d) {
        const double r = (double)y[d] - (double)q[d];
        e += r * r;
        n += (double)y[d] * y[d];
    }
    *err += e;
    *energy += n;
}

struct Token {
    uint32_t t;   // input index
    bool coded;   // quantised (not an fp16 sink or window token)
};

Token kept_token(const BitChoiceInput &in, uint32_t head, uint32_t j) {
    const BlockHeader &h = *in.h;
    const uint32_t K = h.tokens_kept, r = in.rows > 1 ? head : 0;
    Token tk;
    tk.t = in.kept ? in.kept[(size_t)r * K + j] : j;
    tk.coded = j >= h.fp16_sinks && j < K - h.fp16_window;
    return tk;
}

// eps^2 at each bits in [lo, hi] for K (which = 0) or V (1), over a sample of the
// coded tokens of every head.
void measure_errors(const BitChoiceInput &in, int codec, int which, uint32_t lo, uint32_t hi, double *eps2) {
    const nq_kv_desc &kv = *in.kv;
    const BlockHeader &h = *in.h;
    const uint32_t D = h.head_dim, H = h.num_heads;
    const uint32_t first = h.fp16_sinks, last = h.tokens_kept - h.fp16_window;  // coded slots [first, last)
    double err[9] = {0}, energy[9] = {0};
    float row[kMaxHeadDim];
    if (last > first) {
        const uint32_t n = last - first, step = n > kSamplePerHead ? n / kSamplePerHead : 1;
        for (uint32_t hd = 0; hd < H; ++hd)
            for (uint32_t j = first; j < last; j += step) {
                const uint32_t t = kept_token(in, hd, j).t;
                if (which == 0)
                    load_row(kv.k, kv.dtype, kv.k_layout, hd, t, D, row);
                else
                    load_row(kv.v, kv.dtype, kv.v_layout, hd, t, D, row);
                for (uint32_t b = lo; b <= hi; ++b) quantisation_error(row, D, codec, b, &err[b], &energy[b]);
            }
    }
    for (uint32_t b = lo; b <= hi; ++b) eps2[b] = energy[b] > 0.0 ? err[b] / energy[b] : 0.0;
}

// A_K and A_V of bit_choice.h over every query head and query.
// *measured is false when no query saw a kept token (nothing to measure).
nq_status sensitivities(const nq_context *ctx, const BitChoiceInput &in, Workspace &ws, double *a_k, double *a_v,
                        bool *measured) {
    const nq_kv_desc &kv = *in.kv;
    const nq_score_desc &sc = *in.queries;
    const BlockHeader &h = *in.h;
    const uint32_t T = kv.num_tokens, K = h.tokens_kept, D = h.head_dim, H = h.num_heads;
    const uint32_t Hq = ctx->cfg.num_q_heads, group = Hq / H, W = sc.num_queries;
    if (!sc.query_positions && W > T)
        return fail(NQ_ERR_INVALID_ARGUMENT, "scores.num_queries (%u) exceeds num_tokens (%u) and no query_positions given",
                    W, T);
    float *p = ws.take<float>(K);
    float *kn2 = ws.take<float>(K);
    float *vn2 = ws.take<float>(K);
    if (!p || !kn2 || !vn2) return fail(NQ_ERR_BUFFER_TOO_SMALL, "workspace too small (bit choice)");
    const float inv_sqrt_d = (float)(1.0 / std::sqrt((double)D));
    float q[kMaxHeadDim], row[kMaxHeadDim], o[kMaxHeadDim];
    double num_k = 0.0, num_v = 0.0, den = 0.0;
    for (uint32_t hd = 0; hd < H; ++hd) {
        for (uint32_t j = 0; j < K; ++j) {
            const uint32_t t = kept_token(in, hd, j).t;
            load_row(kv.k, kv.dtype, kv.k_layout, hd, t, D, row);
            kn2[j] = dot(row, row, D);
            load_row(kv.v, kv.dtype, kv.v_layout, hd, t, D, row);
            vn2[j] = dot(row, row, D);
        }
        for (uint32_t qh = hd * group; qh < (hd + 1) * group; ++qh)
            for (uint32_t i = 0; i < W; ++i) {
                const int64_t qpos = sc.query_positions ? sc.query_positions[i] : in.positions[T - W + i];
                load_query(sc, qh, i, D, q);
                const float qn2 = dot(q, q, D);
                // causal softmax over the kept tokens this query sees
                float m = -INFINITY;
                uint32_t n = 0;
                for (; n < K; ++n) {
                    const uint32_t t = kept_token(in, hd, n).t;
                    if (in.positions[t] > qpos) break;
                    load_row(kv.k, kv.dtype, kv.k_layout, hd, t, D, row);
                    p[n] = dot(q, row, D) * inv_sqrt_d;
                    if (p[n] > m) m = p[n];
                }
                if (n == 0 || !(m > -INFINITY && m < INFINITY)) continue;
                float z = 0.0f;
                for (uint32_t j = 0; j < n; ++j) {
                    p[j] = nq_expf_nonpos(p[j] - m);
                    z += p[j];
                }
                const float inv_z = 1.0f / z;
                for (uint32_t d = 0; d < D; ++d) o[d] = 0.0f;
                for (uint32_t j = 0; j < n; ++j) {
                    p[j] *= inv_z;
                    const uint32_t t = kept_token(in, hd, j).t;
                    load_row(kv.v, kv.dtype, kv.v_layout, hd, t, D, row);
                    for (uint32_t d = 0; d < D; ++d) o[d] += p[j] * row[d];
                }
                const double on2 = dot(o, o, D);
                const double logit_var_per_err = (double)qn2 / ((double)D * D);  // per unit |d_t|^2
                for (uint32_t j = 0; j < n; ++j) {
                    const Token tk = kept_token(in, hd, j);
                    if (!tk.coded) continue;
                    const double p2 = (double)p[j] * p[j];
                    if (p2 < 1e-12) continue;  // no measurable contribution
                    load_row(kv.v, kv.dtype, kv.v_layout, hd, tk.t, D, row);
                    const double vo = dot(row, o, D);
                    const double spread = std::fmax(0.0, (double)vn2[j] - 2.0 * vo + on2);  // |v_t - o|^2
                    num_k += p2 * logit_var_per_err * kn2[j] * spread;
                    num_v += p2 * vn2[j];
                }
                den += on2;
            }
    }
    *measured = den > 0.0 && std::isfinite(num_k) && std::isfinite(num_v);
    *a_k = *measured ? num_k / den : 0.0;
    *a_v = *measured ? num_v / den : 0.0;
    return NQ_OK;
}

}  // namespace

BitRange bit_range(uint32_t kb0, uint32_t vb0, uint32_t extra) {
    // Never below nominal: the first-order model treats the error of different tokens
    // as independent, and on real caches it is not (values and keys share large common
    // components, quantised alike), so it underrates what a bit less costs: moves to
    // V1 measured +227% perplexity on Qwen2.5-Coder where K3/V2 costs +50%.
    BitRange r;
    r.k_lo = kb0;
    r.k_hi = kb0 + 2 < 8 ? kb0 + 2 : 8;
    r.v_lo = vb0;
    r.v_hi = vb0 < 8 ? vb0 + 1 : 8;
    r.sum_max = kb0 + vb0 + extra;
    if (r.sum_max > r.k_hi + r.v_hi) r.sum_max = r.k_hi + r.v_hi;
    return r;
}

bool meets_floor(const BlockHeader &h, uint32_t kb, uint32_t vb, uint32_t kb0, uint32_t vb0, float floor) {
    if (floor <= 0.0f || kb + vb <= kb0 + vb0) return true;
    BlockHeader c = h;
    c.k_bits = (uint8_t)kb;
    c.v_bits = (uint8_t)vb;
    const double fp16 = 2.0 * h.num_heads * (double)h.tokens_in * h.head_dim * 2.0;
    return fp16 >= (double)floor * (double)block_geometry(c).total;
}

void bound_bits(const BlockHeader &h, uint32_t kb0, uint32_t vb0, uint32_t extra, float floor, uint32_t *kb,
                uint32_t *vb) {
    // Block size grows with k + v (the split does not change it): the bound is the
    // first pair of the largest allowed sum.
    const BitRange r = bit_range(kb0, vb0, extra);
    *kb = kb0;
    *vb = vb0;
    for (uint32_t sum = r.sum_max; sum > kb0 + vb0; --sum)
        for (uint32_t k = r.k_hi; k >= r.k_lo; --k) {
            const uint32_t v = sum - k;
            if (v < r.v_lo || v > r.v_hi || sum - k > sum) continue;
            if (meets_floor(h, k, v, kb0, vb0, floor)) {
                *kb = k;
                *vb = v;
                return;
            }
            break;  // every pair of this sum has the same size
        }
}

size_t bit_choice_scratch_bytes(uint32_t num_tokens) { return (size_t)num_tokens * 3 * sizeof(float) + 3 * 64; }

nq_status choose_bits(const nq_context *ctx, const BitChoiceInput &in, Workspace &ws, BitChoice *out) {
    const BitRange r = bit_range(in.k_bits, in.v_bits, in.extra);
    out->k_bits = in.k_bits;
    out->v_bits = in.v_bits;
    out->a_k = out->a_v = 0.0;
    if (!in.queries) return NQ_OK;  // nominal bits (see bit_choice.h)
    const int codec = in.h->codec;
    double ek[9] = {0}, ev[9] = {0};
    measure_errors(in, codec, 0, r.k_lo, r.k_hi, ek);
    measure_errors(in, codec, 1, r.v_lo, r.v_hi, ev);
    if (!in.queries) return NQ_OK;  // nominal bits (see bit_choice.h)
    bool measured = false;
    NQ_TRY(sensitivities(ctx, in, ws, &out->a_k, &out->a_v, &measured));
    if (!measured) {  // no query saw a kept token: nothing says the nominal pair is wrong
        out->a_k = out->a_v = 0.0;
        return NQ_OK;
    }
    // Cheapest pair within the target; otherwise the least distortion at the bound.
    bool found = false;
    uint32_t best_k = in.k_bits, best_v = in.v_bits, best_sum = 0;
    double best_d = INFINITY;
    for (uint32_t kb = r.k_hi; kb >= r.k_lo; --kb)
        for (uint32_t vb = r.v_lo; vb <= r.v_hi; ++vb) {
            const uint32_t sum = kb + vb;
            if (sum > r.sum_max || !meets_floor(*in.h, kb, vb, in.k_bits, in.v_bits, in.floor)) continue;
            const double d = ek[kb] * out->a_k + ev[vb] * out->a_v;
            const bool ok = d <= (double)in.target;
            bool better;
            if (ok != found)
                better = ok;
            else if (ok)
                better = sum < best_sum || (sum == best_sum && d < best_d);
            else
                better = sum > best_sum || (sum == best_sum && d < best_d);
            if (better) {
                found = found || ok;
                best_k = kb;
                best_v = vb;
                best_sum = sum;
                best_d = d;
            }
        }
    out->k_bits = best_k;
    out->v_bits = best_v;
    return NQ_OK;
}

}  // namespace nq
