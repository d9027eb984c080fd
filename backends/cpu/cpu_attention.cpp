// CPU attention over resident blocks (nq_attention_decode with host memory).
//
// Work items are (sequence, KV head, split); a split is a range of the sequence's kept
// tokens. One item holds the rows of its KV head's query heads times the query tokens
// and walks its tokens in chunks of up to kChunk tokens of one kind (fp16 sinks, coded,
// fp16 window): logits of the chunk, mask, online-softmax update (the running max only
// moves once per chunk), then the values. The scalar ISA runs the reference: every
// kept token decoded to fp32 exactly as nq_decode does (decode_rotated, inverse
// Hadamard, RoPE at the stored position). The SIMD ISAs read coded tokens in the
// rotated domain (attention_kernels.h) and decode only keys stored with RoPE removed,
// 16 at a time, through the decode tile of the codec kernels. Keys of key-centred blocks
// (FORMAT.md 1.8) go through the reference on every ISA, their mean added back.
#include <cmath>
#include <cstring>

#include "../../src/attention/attention.h"
#include "../../src/backend.h"
#include "../../src/core/block_view.h"
#include "../../src/core/rope.h"
#include "../../src/core/vector_codec.h"
#include "cpu_attention_internal.h"
#include "cpu_dispatch.h"
#include "cpu_internal.h"
#include "thread_pool.h"

namespace nq {

const AttnKernels *attn_kernels(nq_cpu_isa isa) {
    switch (isa) {
    case NQ_ISA_AVX512: return attn_kernels_avx512();
    case NQ_ISA_AVX2: return attn_kernels_avx2();
    default: return nullptr;
    }
}

namespace {

constexpr uint32_t kChunk = 256;  // tokens per chunk: a multiple of the decode tile's 16 lanes

size_t up64(size_t b) { return (b + 63) & ~(size_t)63; }
uint32_t min_u(uint32_t a, uint32_t b) { return a < b ? a : b; }

// Per-worker scratch, carved from the workspace.
struct Scratch {
    float *q, *qrot, *acc, *acc_rot, *m, *l, *L, *P, *kbuf, *vbuf, *work, *tabs;
    int64_t *qpos, *pos;
};

size_t scratch_bytes(uint32_t R, uint32_t D) {
    const size_t f = sizeof(float);
    return up64((size_t)R * D * f) * 4 + up64(R * f) * 2 + up64((size_t)R * kChunk * f) * 2 +
           up64((size_t)attn_coded_scratch_floats(kChunk, D, R) * f) + up64((size_t)2 * D * f) + up64((size_t)D * kTileLanesMax * f) +
           up64((size_t)kMaxHeadDim * kTileLanesMax * f) + up64(R * sizeof(int64_t)) + up64(kChunk * sizeof(int64_t));
}

Scratch carve(uint8_t *p, uint32_t R, uint32_t D) {
    Scratch s;
    auto take = [&](size_t bytes) {
        uint8_t *r = p;
        p += up64(bytes);
        return r;
    };
    const size_t f = sizeof(float);
    s.q = reinterpret_cast<float *>(take((size_t)R * D * f));
    s.qrot = reinterpret_cast<float *>(take((size_t)R * D * f));
    s.acc = reinterpret_cast<float *>(take((size_t)R * D * f));
    s.acc_rot = reinterpret_cast<float *>(take((size_t)R * D * f));
    s.m = reinterpret_cast<float *>(take(R * f));
    s.l = reinterpret_cast<float *>(take(R * f));
    s.L = reinterpret_cast<float *>(take((size_t)R * kChunk * f));
    s.P = reinterpret_cast<float *>(take((size_t)R * kChunk * f));
    s.kbuf = reinterpret_cast<float *>(take((size_t)attn_coded_scratch_floats(kChunk, D, R) * f));
    s.vbuf = reinterpret_cast<float *>(take((size_t)2 * D * f));
    s.work = reinterpret_cast<float *>(take((size_t)D * kTileLanesMax * f));
    s.tabs = reinterpret_cast<float *>(take((size_t)kMaxHeadDim * kTileLanesMax * f));
    s.qpos = reinterpret_cast<int64_t *>(take(R * sizeof(int64_t)));
    s.pos = reinterpret_cast<int64_t *>(take(kChunk * sizeof(int64_t)));
    return s;
}

uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

float load_elem(const void *base, nq_dtype dt, int64_t idx) {
    switch (dt) {
    case NQ_DTYPE_F16: return f16_to_f32(static_cast<const uint16_t *>(base)[idx]);
    case NQ_DTYPE_BF16: return bf16_to_f32(static_cast<const uint16_t *>(base)[idx]);
    default: return static_cast<const float *>(base)[idx];
    }
}

void store_elem(void *base, nq_dtype dt, int64_t idx, float v) {
    switch (dt) {
    case NQ_DTYPE_F16: static_cast<uint16_t *>(base)[idx] = f32_to_f16(v); break;
    case NQ_DTYPE_BF16: static_cast<uint16_t *>(base)[idx] = f32_to_bf16(v); break;
    default: static_cast<float *>(base)[idx] = v;
    }
}

struct Job {
    const nq_context *ctx;
    const AttentionCall *call;
    const AttnKernels *ak;   // NULL: the scalar reference
    const CpuKernels *kn;    // decode tiles for keys stored with RoPE removed
    uint8_t *scratch;        // workers x per_worker
    size_t per_worker;
    float *partial;          // splits > 1: [item][split][R][D + 1] (normalised out, lse)
    uint32_t R, workers, items;
};

// One (sequence, KV head, split).
class Item {
  public:
    Item(const Job &job, Scratch &s, uint32_t seq, uint32_t kvh, uint32_t split)
        : job_(job), c_(*job.call), s_(s), seq_(seq), g_(kvh), split_(split), D_(c_.head_dim), R_(job.R) {}

    void run() {
        load_queries();
        uint64_t total = 0;
        const uint32_t b0 = c_.block_indptr[seq_], b1 = c_.block_indptr[seq_ + 1];
        for (uint32_t b = b0; b < b1; ++b) total += BlockView::of(c_.block_images[b]).tokens_kept;
        const uint64_t t0 = total * split_ / c_.num_splits, t1 = total * (split_ + 1) / c_.num_splits;
        uint64_t base = 0;
        for (uint32_t b = b0; b < b1 && base < t1; ++b) {
            const BlockView v = BlockView::of(c_.block_images[b]);
            const uint64_t e = base + v.tokens_kept;
            if (e > t0) {
                const uint32_t j0 = (uint32_t)(t0 > base ? t0 - base : 0), j1 = (uint32_t)(t1 < e ? t1 - base : v.tokens_kept);
                block(v, j0, j1);
            }
            base = e;
        }
        finish();
    }

  private:
    const Job &job_;
    const AttentionCall &c_;
    Scratch &s_;
    uint32_t seq_, g_, split_, D_, R_;
    bool qrot_ready_ = false;
    bool any_rot_ = false;

    void load_queries() {
        const uint32_t G = c_.group;
        for (uint32_t i = 0; i < c_.q_tokens; ++i)
            for (uint32_t hh = 0; hh < G; ++hh) {
                const uint32_t r = i * G + hh, h = g_ * G + hh;
                const int64_t base = (int64_t)seq_ * c_.q_stride_seq + (int64_t)i * c_.q_stride_token + (int64_t)h * c_.q_stride_head;
                for (uint32_t d = 0; d < D_; ++d) s_.q[(size_t)r * D_ + d] = load_elem(c_.q, c_.dtype, base + d);
                s_.qpos[r] = c_.q_positions ? c_.q_positions[(size_t)seq_ * c_.q_tokens + i] : 0;
                s_.m[r] = -INFINITY;
                s_.l[r] = 0.0f;
            }
        std::memset(s_.acc, 0, sizeof(float) * R_ * D_);
        std::memset(s_.acc_rot, 0, sizeof(float) * R_ * D_);
    }

    // H signs q for every row, once, when the first coded key without per-key RoPE comes.
    const float *qrot() {
        if (!qrot_ready_) {
            std::memcpy(s_.qrot, s_.q, sizeof(float) * R_ * D_);
            for (uint32_t r = 0; r < R_; ++r) hadamard_forward(s_.qrot + (size_t)r * D_, D_);
            qrot_ready_ = true;
        }
        return s_.qrot;
    }

    void block(const BlockView &v, uint32_t j0, uint32_t j1) {
        const uint32_t s_end = v.fp16_sinks, w_begin = v.tokens_kept - v.fp16_window;
        const uint32_t cuts[4] = {0, s_end, w_begin, v.tokens_kept};
        for (int seg = 0; seg < 3; ++seg) {
            const uint32_t a = cuts[seg] > j0 ? cuts[seg] : j0, e = cuts[seg + 1] < j1 ? cuts[seg + 1] : j1;
            for (uint32_t j = a; j < e; j += kChunk) chunk(v, j, min_u(kChunk, e - j), seg == 1);
        }
    }

    // Logits of the chunk into L (pre-scale), then the softmax update into P, then values.
    void chunk(const BlockView &v, uint32_t j, uint32_t n, bool coded) {
        // Positions only where something reads them: masks, RoPE of keys decoded here.
        // Key-centred blocks (FORMAT.md 1.8): with RoPE kept the mean is one logit offset
        // per query; with RoPE removed the decode tiles add it before the inverse rotation.
        const bool ref_keys = !job_.ak;
        if (c_.q_positions || (coded && (ref_keys || v.rope_mode == NQ_ROPE_REMOVE)))
            for (uint32_t t = 0; t < n; ++t) s_.pos[t] = v.position(g_, j + t);
        if (c_.q_positions && !any_visible(n)) return;
        float kscale = c_.scale;
        uint32_t slot;
        v.coded_slot(j, &slot);
        if (!coded) {
            raw_logits(v.k_raw(g_, slot), n);
        } else if (ref_keys) {
            reference_logits(v, slot, n);
        } else if (v.rope_mode == NQ_ROPE_REMOVE) {
            remove_logits(v, slot, n);
        } else {
            AttnCodes cc = codes(v, v.k_codes(g_, slot), v.k_scales(g_) + slot, v.k_code_bytes, v.k_bits, n);
            job_.ak->coded_logits(cc, qrot(), R_, s_.L, kChunk, s_.kbuf);
            if (v.key_mean()) key_mean_offsets(v, n);
            kscale = c_.scale / (float)v.hadamard_block;
        }
        softmax(n, kscale);
        if (!coded) {
            const uint16_t *vr = v.v_raw(g_, slot);
            if (job_.ak) {
                job_.ak->f16_accumulate(vr, n, D_, s_.P, kChunk, R_, s_.acc);
            } else {
                for (uint32_t t = 0; t < n; ++t) {
                    for (uint32_t d = 0; d < D_; ++d) s_.vbuf[d] = f16_to_f32(vr[(size_t)t * D_ + d]);
                    add_row(t, s_.vbuf, s_.acc);
                }
            }
        } else if (!job_.ak) {
            for (uint32_t t = 0; t < n; ++t) {
                decode_rotated(v.v_codes(g_, slot + t), D_, v.codec, v.v_bits, rd16(reinterpret_cast<const uint8_t *>(v.v_scales(g_) + slot + t)), s_.vbuf);
                hadamard_inverse(s_.vbuf, D_);
                add_row(t, s_.vbuf, s_.acc);
            }
        } else {
            AttnCodes cc = codes(v, v.v_codes(g_, slot), v.v_scales(g_) + slot, v.v_code_bytes, v.v_bits, n);
            job_.ak->coded_accumulate(cc, s_.P, kChunk, R_, s_.acc_rot, s_.kbuf);
            any_rot_ = true;
        }
    }

    AttnCodes codes(const BlockView &v, const uint8_t *first, const uint16_t *scales, uint32_t code_bytes, int bits,
                    uint32_t n) const {
        AttnCodes cc;
        cc.codes = first;
        cc.scales = reinterpret_cast<const uint8_t *>(scales);
        uint64_t total;
        std::memcpy(&total, v.base + 120, 8);
        cc.end = v.base + total;
        cc.code_bytes = code_bytes;
        cc.head_dim = D_;
        cc.n = n;
        cc.codec = v.codec;
        cc.bits = bits;
        return cc;
    }

    bool visible(uint32_t r, int64_t pos) const {
        if (!c_.q_positions) return true;
        const int64_t qp = s_.qpos[r];
        return pos <= qp && (c_.window == 0 || qp - pos < (int64_t)c_.window);
    }

    bool any_visible(uint32_t n) const {
        for (uint32_t r = 0; r < R_; r += c_.group)
            for (uint32_t t = 0; t < n; ++t)
                if (visible(r, s_.pos[t])) return true;
        return false;
    }

    void raw_logits(const uint16_t *k, uint32_t n) {
        if (job_.ak) {
            job_.ak->f16_logits(k, n, D_, s_.q, R_, s_.L, kChunk);
            return;
        }
        for (uint32_t t = 0; t < n; ++t) {
            for (uint32_t d = 0; d < D_; ++d) s_.vbuf[d] = f16_to_f32(k[(size_t)t * D_ + d]);
            dot_rows(t, s_.vbuf);
        }
    }

    // A centred key is m + s_k p in the rotated domain: each logit of the chunk (in the
    // units coded_logits writes, <H q, s_k p>) gains <H q, m>, one number per query row.
    void key_mean_offsets(const BlockView &v, uint32_t n) {
        const uint8_t *m = reinterpret_cast<const uint8_t *>(v.k_mean(g_));
        for (uint32_t d = 0; d < D_; ++d) s_.vbuf[d] = f16_to_f32(rd16(m + 2 * d));
        const float *qr = qrot();
        for (uint32_t r = 0; r < R_; ++r) {
            float b = 0.0f;
            for (uint32_t d = 0; d < D_; ++d) b += qr[(size_t)r * D_ + d] * s_.vbuf[d];
            float *x = s_.L + (size_t)r * kChunk;
            for (uint32_t t = 0; t < n; ++t) x[t] += b;
        }
    }

    // The reference: each key decoded exactly as nq_decode returns it.
    void reference_logits(const BlockView &v, uint32_t slot, uint32_t n) {
        RopeFreqs rf;
        if (v.rope_mode == NQ_ROPE_REMOVE) rf.init(v);
        for (uint32_t t = 0; t < n; ++t) {
            decode_rotated(v.k_codes(g_, slot + t), D_, v.codec, v.k_bits,
                           rd16(reinterpret_cast<const uint8_t *>(v.k_scales(g_) + slot + t)), s_.vbuf);
            if (v.key_mean()) {
                const uint8_t *m = reinterpret_cast<const uint8_t *>(v.k_mean(g_));
                for (uint32_t d = 0; d < D_; ++d) s_.vbuf[d] = s_.vbuf[d] + f16_to_f32(rd16(m + 2 * d));
            }
            hadamard_inverse(s_.vbuf, D_);
            if (v.rope_mode == NQ_ROPE_REMOVE) {
                float cf[kMaxHeadDim / 2], sf[kMaxHeadDim / 2], ci[kMaxHeadDim / 2], si[kMaxHeadDim / 2];
                rope_tables(rf.inv_freq, rf.nf, rf.mscale, s_.pos[t], cf, sf, ci, si);
                rope_rotate(s_.vbuf, rf.pairing, rf.rotary_dims, cf, sf);
            }
            dot_rows(t, s_.vbuf);
        }
    }

    struct RopeFreqs {
        double inv_freq[kMaxHeadDim / 2];
        double step_c[kMaxHeadDim / 2], step_s[kMaxHeadDim / 2];  // cos/sin of one position step
        double mscale = 1.0;
        uint32_t nf = 0, rotary_dims = 0;
        uint8_t pairing = 1;
        void init(const BlockView &v) {
            BlockHeader h;
            header_read(v.base, &h);
            block_rope_freqs(h, inv_freq, &mscale);
            nf = h.rotary_dims / 2u;
            rotary_dims = h.rotary_dims;
            pairing = h.rope_pairing;
            for (uint32_t i = 0; i < nf; ++i) {
                step_c[i] = std::cos(inv_freq[i]);
                step_s[i] = std::sin(inv_freq[i]);
            }
        }
    };

    // Forward RoPE tables of n positions in the tile layout [nf][W] (cos, then sin, each
    // times mscale). A position one past the previous one advances the previous angle
    // by one step (complex multiplication in float64); any other position is computed
    // from its angle. The recurrence drifts by about 1e-15 over a chunk, far below the
    // float rounding of the tables.
    // pos[-1] is read when `continues` (the previous tile's last position, whose angle
    // c, s hold).
    void tables(const RopeFreqs &rf, const int64_t *pos, uint32_t n, uint32_t W, float *tc, float *ts, double *c,
                double *s, bool continues) const {
        for (uint32_t t = 0; t < n; ++t) {
            const bool next = (t > 0 || continues) && pos[t] == pos[(int64_t)t - 1] + 1;
            for (uint32_t i = 0; i < rf.nf; ++i) {
                if (next) {
                    const double cn = c[i] * rf.step_c[i] - s[i] * rf.step_s[i];
                    s[i] = s[i] * rf.step_c[i] + c[i] * rf.step_s[i];
                    c[i] = cn;
                } else {
                    const double angle = (double)pos[t] * rf.inv_freq[i];
                    c[i] = std::cos(angle);
                    s[i] = std::sin(angle);
                }
                tc[(size_t)i * W + t] = (float)(c[i] * rf.mscale);
                ts[(size_t)i * W + t] = (float)(s[i] * rf.mscale);
            }
        }
    }

    // Keys stored with RoPE removed: 16 at a time through the codec's decode tile (fp32
    // rows with RoPE re-applied), then fp32 logits.
    void remove_logits(const BlockView &v, uint32_t slot, uint32_t n) {
        const CpuKernels &kn = *job_.kn;
        RopeFreqs rf;
        rf.init(v);
        const uint32_t W = kn.lanes;
        double c[kMaxHeadDim / 2], sn[kMaxHeadDim / 2];
        const float *mean = nullptr;  // the key mean as f32 (the second half of vbuf)
        if (v.key_mean()) {
            const uint8_t *m = reinterpret_cast<const uint8_t *>(v.k_mean(g_));
            for (uint32_t d = 0; d < D_; ++d) s_.vbuf[D_ + d] = f16_to_f32(rd16(m + 2 * d));
            mean = s_.vbuf + D_;
        }
        for (uint32_t t = 0; t < n; t += W) {
            const uint32_t m = min_u(W, n - t);
            const size_t table = (size_t)rf.nf * W;
            // The chunk's first position from its angle; the recurrence runs across tiles.
            tables(rf, s_.pos + t, m, W, s_.tabs, s_.tabs + table, c, sn, t > 0);
            DecodeTile tile{};
            tile.lanes = m;
            tile.head_dim = D_;
            tile.codec = v.codec;
            tile.bits = v.k_bits;
            tile.scales = reinterpret_cast<const uint8_t *>(v.k_scales(g_) + slot + t);
            tile.codes = v.k_codes(g_, slot + t);
            tile.rope = TileRope{s_.tabs, s_.tabs + table, rf.rotary_dims, rf.pairing};
            tile.dtype = NQ_DTYPE_F32;
            tile.work = s_.work;
            tile.mean = mean;
            for (uint32_t w = 0; w < m; ++w) tile.rows[w] = s_.kbuf + (size_t)(t + w) * D_;
            kn.decode(tile);
        }
        job_.ak->f32_logits(s_.kbuf, n, D_, s_.q, R_, s_.L, kChunk);
    }

    void dot_rows(uint32_t t, const float *k) {
        for (uint32_t r = 0; r < R_; ++r) {
            const float *q = s_.q + (size_t)r * D_;
            float acc = 0.0f;
            for (uint32_t d = 0; d < D_; ++d) acc += q[d] * k[d];
            s_.L[(size_t)r * kChunk + t] = acc;
        }
    }

    void add_row(uint32_t t, const float *vrow, float *acc) {
        for (uint32_t r = 0; r < R_; ++r) {
            const float p = s_.P[(size_t)r * kChunk + t];
            if (p == 0.0f) continue;
            float *a = acc + (size_t)r * D_;
            for (uint32_t d = 0; d < D_; ++d) a[d] += p * vrow[d];
        }
    }

    // Scale, soft-cap and mask the logits; move each row's running max once for the
    // chunk (rescaling what was summed so far); P = exp(x - max).
    void softmax(uint32_t n, float kscale) {
        for (uint32_t r = 0; r < R_; ++r) {
            float *x = s_.L + (size_t)r * kChunk;
            float *p = s_.P + (size_t)r * kChunk;
            // Branch-free loops for the common case (no soft-cap, no mask); four partial
            // maxima so the comparisons do not form one dependency chain.
            for (uint32_t t = 0; t < n; ++t) x[t] *= kscale;
            if (c_.softcap > 0.0f)
                for (uint32_t t = 0; t < n; ++t) x[t] = c_.softcap * std::tanh(x[t] / c_.softcap);
            if (c_.q_positions)
                for (uint32_t t = 0; t < n; ++t)
                    if (!visible(r, s_.pos[t])) x[t] = -INFINITY;
            float m4[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
            uint32_t t = 0;
            for (; t + 4 <= n; t += 4)
                for (uint32_t k = 0; k < 4; ++k) m4[k] = x[t + k] > m4[k] ? x[t + k] : m4[k];
            for (; t < n; ++t) m4[0] = x[t] > m4[0] ? x[t] : m4[0];
            const float m01 = m4[0] > m4[1] ? m4[0] : m4[1], m23 = m4[2] > m4[3] ? m4[2] : m4[3];
            const float mx = m01 > m23 ? m01 : m23;
            if (mx == -INFINITY) {
                std::memset(p, 0, sizeof(float) * n);
                continue;
            }
            if (mx > s_.m[r]) {
                if (s_.l[r] > 0.0f) {
                    const float f = std::exp(s_.m[r] - mx);
                    s_.l[r] *= f;
                    float *a = s_.acc + (size_t)r * D_, *ar = s_.acc_rot + (size_t)r * D_;
                    for (uint32_t d = 0; d < D_; ++d) {
                        a[d] *= f;
                        ar[d] *= f;
                    }
                }
                s_.m[r] = mx;
            }
            if (job_.ak) {
                s_.l[r] += job_.ak->exp_sum(x, s_.m[r], p, n);
            } else {
                float sum = 0.0f;
                for (uint32_t t = 0; t < n; ++t) {
                    p[t] = x[t] == -INFINITY ? 0.0f : std::exp(x[t] - s_.m[r]);
                    sum += p[t];
                }
                s_.l[r] += sum;
            }
        }
    }

    void finish() {
        const uint32_t G = c_.group;
        for (uint32_t r = 0; r < R_; ++r) {
            float *a = s_.acc + (size_t)r * D_;
            if (any_rot_) {
                float *ar = s_.acc_rot + (size_t)r * D_;
                hadamard_inverse(ar, D_);
                for (uint32_t d = 0; d < D_; ++d) a[d] += ar[d];
            }
            const float l = s_.l[r];
            const float inv = l > 0.0f ? 1.0f / l : 0.0f;
            const float lse = l > 0.0f ? s_.m[r] + std::log(l) : -INFINITY;
            for (uint32_t d = 0; d < D_; ++d) a[d] *= inv;
            const uint32_t i = r / G, hh = r % G, h = g_ * G + hh;
            if (c_.num_splits > 1) {
                const uint32_t item = seq_ * c_.num_kv_heads + g_;
                float *dst = job_.partial + (((size_t)item * c_.num_splits + split_) * R_ + r) * (D_ + 1);
                std::memcpy(dst, a, sizeof(float) * D_);
                dst[D_] = lse;
                continue;
            }
            write_out(c_, seq_, i, h, a, lse);
        }
    }

  public:
    static void write_out(const AttentionCall &c, uint32_t seq, uint32_t i, uint32_t h, const float *o, float lse) {
        const int64_t base = (int64_t)seq * c.out_stride_seq + (int64_t)i * c.out_stride_token + (int64_t)h * c.out_stride_head;
        for (uint32_t d = 0; d < c.head_dim; ++d) store_elem(c.out, c.dtype, base + d, o[d]);
        if (c.lse) c.lse[((size_t)seq * c.q_tokens + i) * c.num_q_heads + h] = lse;
    }
};

void worker(void *vp, uint32_t w) {
    const Job &job = *static_cast<const Job *>(vp);
    FpEnvGuard env;
    Scratch s = carve(job.scratch + (size_t)w * job.per_worker, job.R, job.call->head_dim);
    const AttentionCall &c = *job.call;
    const uint32_t tasks = job.items * c.num_splits;
    for (uint32_t t = w; t < tasks; t += job.workers) {
        const uint32_t item = t / c.num_splits, split = t % c.num_splits;
        Item it(job, s, item / c.num_kv_heads, item % c.num_kv_heads, split);
        it.run();
    }
}

// Splits of one (sequence, KV head) merged in order: the rule of nq_attention_merge.
void merge_item(void *vp, uint32_t item) {
    const Job &job = *static_cast<const Job *>(vp);
    FpEnvGuard env;
    const AttentionCall &c = *job.call;
    const uint32_t D = c.head_dim, G = c.group, seq = item / c.num_kv_heads, g = item % c.num_kv_heads;
    float *o = carve(job.scratch + (size_t)(item % job.workers) * job.per_worker, job.R, D).acc;
    for (uint32_t r = 0; r < job.R; ++r) {
        float lse = -INFINITY;
        std::memset(o, 0, sizeof(float) * D);
        for (uint32_t sp = 0; sp < c.num_splits; ++sp) {
            const float *p = job.partial + (((size_t)item * c.num_splits + sp) * job.R + r) * (D + 1);
            const float b = p[D];
            if (b == -INFINITY) continue;
            if (lse == -INFINITY) {
                std::memcpy(o, p, sizeof(float) * D);
                lse = b;
                continue;
            }
            const float m = lse > b ? lse : b, ea = std::exp(lse - m), eb = std::exp(b - m), sum = ea + eb;
            const float wa = ea / sum, wb = eb / sum;
            for (uint32_t d = 0; d < D; ++d) o[d] = wa * o[d] + wb * p[d];
            lse = m + std::log(sum);
        }
        Item::write_out(c, seq, r / G, g * G + r % G, o, lse);
    }
}

void merge_worker(void *vp, uint32_t w) {
    const Job &job = *static_cast<const Job *>(vp);
    for (uint32_t item = w; item < job.items; item += job.workers) merge_item(vp, item);
}

uint32_t workers_for(const nq_context *ctx, const AttentionCall &call) {
    const uint32_t threads = thread_pool_size(cpu_pool(ctx));
    const uint64_t tasks = (uint64_t)call.num_seqs * call.num_kv_heads * call.num_splits;
    return (uint32_t)(tasks < threads ? (tasks ? tasks : 1) : threads);
}

}  // namespace

size_t cpu_attention_workspace_bytes(const nq_context *ctx, const AttentionCall &call) {
    const uint32_t R = call.group * call.q_tokens;
    size_t bytes = (size_t)workers_for(ctx, call) * scratch_bytes(R, call.head_dim);
    if (call.num_splits > 1)
        bytes += up64((size_t)call.num_seqs * call.num_kv_heads * call.num_splits * R * (call.head_dim + 1) * sizeof(float));
    return bytes + 64;
}

nq_status cpu_attention(const nq_context *ctx, const AttentionCall &call, void *workspace) {
    FpEnvGuard env;
    Job job{};
    job.ctx = ctx;
    job.call = &call;
    job.ak = attn_kernels(cpu_isa(ctx));
    job.kn = cpu_kernels(cpu_isa(ctx));
    if (!job.kn) job.ak = nullptr;
    job.R = call.group * call.q_tokens;
    job.items = call.num_seqs * call.num_kv_heads;
    job.workers = workers_for(ctx, call);
    job.per_worker = scratch_bytes(job.R, call.head_dim);
    uint8_t *p = reinterpret_cast<uint8_t *>(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
    job.scratch = p;
    job.partial = call.num_splits > 1 ? reinterpret_cast<float *>(p + (size_t)job.workers * job.per_worker) : nullptr;
    thread_pool_run(cpu_pool(ctx), job.workers, worker, &job);
    if (call.num_splits > 1) thread_pool_run(cpu_pool(ctx), job.workers, merge_worker, &job);
    return NQ_OK;
}

}  // namespace nq
