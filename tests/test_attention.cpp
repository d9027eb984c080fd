// nq_attention_decode on the CPU, every ISA, against float64 attention over what
// nq_decode returns for the same blocks (keys and values decoded to f32, positions from
// nq_block_positions): relative error of the outputs and absolute error of the LSE.
//
// Bounds: the library sums in fp32 (in the rotated domain on the SIMD paths, with a
// polynomial exp), the reference in float64 over the same decoded fp32 keys and values.
// Measured errors are 1e-7..8e-7 relative on every ISA (NQ_TEST_VERBOSE=1 prints them);
// the bounds are 1e-5 for f32 outputs and the dtype's rounding for f16 (2e-3) and bf16
// (1.6e-2); LSE 2e-5 absolute. A wrong bit of a code moves them by 1e-2 or more.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "api_harness.h"

namespace nqt {
namespace {

struct Spec {
    uint32_t kv = 2, group = 2, D = 64, q_tokens = 1;
    nq_rope_mode rope = NQ_ROPE_KEEP;
    int32_t fp16_sinks = 0, fp16_window = 0;
    float evict = 0.0f;
    nq_evict_mode em = NQ_EVICT_PER_HEAD;
    uint32_t k_bits = 3, v_bits = 2;
    nq_codec codec = NQ_CODEC_E8;
    nq_dtype dt = NQ_DTYPE_F32;
    bool positions = false;
    int64_t qpos_back = 0;  // q token i sits at last + 1 - qpos_back * (q_tokens - i)
    uint32_t window = 0;
    float softcap = 0.0f, scale = 0.0f;
    std::vector<std::vector<uint32_t>> seqs{{100}};  // chunk sizes appended per sequence
    nq_cpu_isa isa = NQ_ISA_AUTO;
    uint32_t threads = 1, splits = 0;
};

double out_bound(nq_dtype dt) { return dt == NQ_DTYPE_F32 ? 1e-5 : (dt == NQ_DTYPE_F16 ? 2e-3 : 1.6e-2); }

struct Seqs {
    Ctx ctx;
    std::vector<Seq> seqs;
    std::vector<int64_t> last;  // last position per sequence
};

nq_config spec_config(const Spec &s) {
    nq_config c = plain_config(s.kv, s.D, s.k_bits, s.v_bits);
    c.num_q_heads = s.kv * s.group;
    c.codec = s.codec;
    c.rope.mode = s.rope;
    c.rope.theta = 10000.0;
    c.fp16_sinks = s.fp16_sinks;
    c.fp16_window = s.fp16_window;
    c.sink_tokens = s.fp16_sinks;
    c.recent_window = s.fp16_window;
    c.evict_fraction = s.evict;
    c.evict_mode = s.em;
    c.cpu_isa = s.isa;
    c.num_threads = s.threads;
    return c;
}

Seqs build(const Spec &s) {
    Seqs out;
    out.ctx = make_ctx(spec_config(s));
    for (size_t i = 0; i < s.seqs.size(); ++i) {
        nq_sequence *p = nullptr;
        EXPECT_EQ(nq_sequence_create(out.ctx.get(), 0, &p), NQ_OK) << nq_last_error();
        out.seqs.emplace_back(p);
        int64_t pos = (int64_t)below(5);
        for (uint32_t n : s.seqs[i]) {
            std::vector<float> k((size_t)s.kv * n * s.D), v(k.size());
            for (size_t e = 0; e < k.size(); ++e) {
                k[e] = (float)(gauss() + ((e / s.D) % 3 == 0 ? 0.5 : 0.0));
                v[e] = (float)gauss();
            }
            nq_kv_desc kv;
            nq_kv_desc_init(&kv);
            kv.dtype = NQ_DTYPE_F32;
            kv.num_tokens = n;
            kv.k = k.data();
            kv.v = v.data();
            nq_layout_contiguous(&kv.k_layout, n, s.D);
            nq_layout_contiguous(&kv.v_layout, n, s.D);
            kv.start_position = pos;
            EXPECT_EQ(nq_sequence_append(p, &kv, nullptr, nullptr), NQ_OK) << nq_last_error();
            pos += n;
        }
        out.last.push_back(pos - 1);
    }
    return out;
}

// One KV head's kept tokens of a sequence, decoded as nq_decode returns them.
struct HeadKV {
    std::vector<int64_t> pos;
    std::vector<float> k, v;  // [tokens][D]
};

std::vector<HeadKV> decode_seq(nq_context *ctx, const nq_sequence *seq, uint32_t kv, uint32_t D, size_t b0, size_t b1) {
    std::vector<HeadKV> heads(kv);
    for (size_t b = b0; b < b1; ++b) {
        const nq_block *blk = nq_sequence_block(seq, b);
        nq_block_info info;
        info.size = sizeof info;
        EXPECT_EQ(nq_block_get_info(blk, &info), NQ_OK);
        const uint32_t n = info.tokens_kept;
        std::vector<float> k((size_t)kv * n * D), v(k.size());
        nq_kv_desc out;
        nq_kv_desc_init(&out);
        out.dtype = NQ_DTYPE_F32;
        out.num_tokens = n;
        out.k = k.data();
        out.v = v.data();
        nq_layout_contiguous(&out.k_layout, n, D);
        nq_layout_contiguous(&out.v_layout, n, D);
        EXPECT_EQ(nq_decode(ctx, blk, 0, n, &out, nullptr), NQ_OK) << nq_last_error();
        for (uint32_t h = 0; h < kv; ++h) {
            std::vector<int64_t> p(n);
            EXPECT_EQ(nq_block_positions(blk, h, 0, n, p.data()), NQ_OK);
            heads[h].pos.insert(heads[h].pos.end(), p.begin(), p.end());
            heads[h].k.insert(heads[h].k.end(), k.begin() + (size_t)h * n * D, k.begin() + (size_t)(h + 1) * n * D);
            heads[h].v.insert(heads[h].v.end(), v.begin() + (size_t)h * n * D, v.begin() + (size_t)(h + 1) * n * D);
        }
    }
    return heads;
}

// Queries (stored in the dtype) and the call's outputs.
struct Call {
    std::vector<uint8_t> q, out;
    std::vector<float> lse;
    std::vector<int64_t> qpos;
    std::vector<double> qd;  // the stored query values
    std::vector<const void *> images;
    std::vector<uint32_t> indptr;
    nq_attention_desc desc;
};

void put(nq_dtype dt, uint8_t *base, size_t i, double x) {
    if (dt == NQ_DTYPE_F32) {
        float f = (float)x;
        std::memcpy(base + 4 * i, &f, 4);
    } else {
        uint16_t b = dt == NQ_DTYPE_F16 ? ref_f16_bits(x) : ref_bf16_bits(x);
        std::memcpy(base + 2 * i, &b, 2);
    }
}
double get(nq_dtype dt, const uint8_t *base, size_t i) {
    if (dt == NQ_DTYPE_F32) {
        float f;
        std::memcpy(&f, base + 4 * i, 4);
        return f;
    }
    uint16_t b;
    std::memcpy(&b, base + 2 * i, 2);
    return dt == NQ_DTYPE_F16 ? ref_f16_value(b) : ref_bf16_value(b);
}

Call make_call(const Spec &s, const Seqs &sq, const std::vector<std::pair<size_t, size_t>> &ranges) {
    Call c;
    const uint32_t S = (uint32_t)sq.seqs.size(), QH = s.kv * s.group, D = s.D, T = s.q_tokens;
    const size_t n = (size_t)S * T * QH * D, es = s.dt == NQ_DTYPE_F32 ? 4 : 2;
    c.q.resize(n * es);
    c.out.assign(n * es, 0xA5);
    c.lse.assign((size_t)S * T * QH, 12345.0f);
    c.qd.resize(n);
    for (size_t i = 0; i < n; ++i) {
        const double x = round_to(s.dt, gauss());
        put(s.dt, c.q.data(), i, x);
        c.qd[i] = x;
    }
    c.indptr.push_back(0);
    for (uint32_t i = 0; i < S; ++i) {
        for (size_t b = ranges[i].first; b < ranges[i].second; ++b) {
            const void *img;
            size_t bytes;
            EXPECT_EQ(nq_block_data(nq_sequence_block(sq.seqs[i].get(), b), &img, &bytes), NQ_OK);
            c.images.push_back(img);
        }
        c.indptr.push_back((uint32_t)c.images.size());
        for (uint32_t t = 0; t < T; ++t) c.qpos.push_back(sq.last[i] + 1 - s.qpos_back * (int64_t)(T - t));
    }
    nq_attention_desc_init(&c.desc);
    c.desc.num_seqs = S;
    c.desc.q_tokens = T;
    c.desc.dtype = s.dt;
    c.desc.block_images = c.images.data();
    c.desc.block_indptr = c.indptr.data();
    c.desc.q = c.q.data();
    c.desc.out = c.out.data();
    c.desc.lse = c.lse.data();
    c.desc.q_positions = s.positions ? c.qpos.data() : nullptr;
    c.desc.scale = s.scale;
    c.desc.softcap = s.softcap;
    c.desc.window = s.window;
    c.desc.num_splits = s.splits;
    return c;
}

struct Errors {
    double out = 0, lse = 0;
    size_t masked_rows = 0, rows = 0;
};

// Float64 attention of the call's queries over the decoded tokens; compares.
Errors compare(const Spec &s, const Seqs &sq, const Call &c, const std::vector<std::pair<size_t, size_t>> &ranges) {
    Errors e;
    const uint32_t S = (uint32_t)sq.seqs.size(), QH = s.kv * s.group, D = s.D, T = s.q_tokens;
    const double scale = s.scale > 0 ? s.scale : 1.0 / std::sqrt((double)D);
    for (uint32_t i = 0; i < S; ++i) {
        const auto heads = decode_seq(sq.ctx.get(), sq.seqs[i].get(), s.kv, D, ranges[i].first, ranges[i].second);
        for (uint32_t t = 0; t < T; ++t) {
            const int64_t qp = c.qpos[(size_t)i * T + t];
            for (uint32_t h = 0; h < QH; ++h) {
                const HeadKV &hk = heads[h / s.group];
                const size_t row = ((size_t)i * T + t) * QH + h;
                const double *q = &c.qd[row * D];
                std::vector<double> x;
                std::vector<size_t> idx;
                for (size_t j = 0; j < hk.pos.size(); ++j) {
                    if (s.positions && (hk.pos[j] > qp || (s.window && qp - hk.pos[j] >= (int64_t)s.window))) continue;
                    double dot = 0;
                    for (uint32_t d = 0; d < D; ++d) dot += q[d] * (double)hk.k[j * D + d];
                    double y = dot * scale;
                    if (s.softcap > 0) y = s.softcap * std::tanh(y / s.softcap);
                    x.push_back(y);
                    idx.push_back(j);
                }
                ++e.rows;
                if (x.empty()) {
                    ++e.masked_rows;
                    EXPECT_TRUE(std::isinf(c.lse[row]) && c.lse[row] < 0) << "row " << row << " lse " << c.lse[row];
                    for (uint32_t d = 0; d < D; ++d) EXPECT_EQ(get(s.dt, c.out.data(), row * D + d), 0.0);
                    continue;
                }
                double mx = -INFINITY;
                for (double y : x) mx = std::max(mx, y);
                double l = 0;
                std::vector<double> o(D, 0.0);
                for (size_t j = 0; j < x.size(); ++j) {
                    const double p = std::exp(x[j] - mx);
                    l += p;
                    for (uint32_t d = 0; d < D; ++d) o[d] += p * (double)hk.v[idx[j] * D + d];
                }
                double num = 0, den = 0;
                for (uint32_t d = 0; d < D; ++d) {
                    const double r = o[d] / l, got = get(s.dt, c.out.data(), row * D + d);
                    num += (got - r) * (got - r);
                    den += r * r;
                }
                e.out = std::max(e.out, std::sqrt(num / std::max(den, 1e-300)));
                e.lse = std::max(e.lse, std::fabs((double)c.lse[row] - (mx + std::log(l))));
            }
        }
    }
    return e;
}

std::vector<std::pair<size_t, size_t>> all_blocks(const Seqs &sq) {
    std::vector<std::pair<size_t, size_t>> r;
    for (const Seq &s : sq.seqs) r.emplace_back(0, nq_sequence_num_blocks(s.get()));
    return r;
}

// Runs the spec on every ISA the CPU has; returns false (skipped) for ISAs it lacks.
void check(Spec s, const char *what) {
    const nq_cpu_isa isas[] = {NQ_ISA_SCALAR, NQ_ISA_AVX2, NQ_ISA_AVX512};
    const char *names[] = {"scalar", "avx2", "avx512"};
    for (int k = 0; k < 3; ++k) {
        s.isa = isas[k];
        Seqs sq = build(s);
        if (std::string(nq_context_cpu_isa(sq.ctx.get())) != names[k]) continue;  // not on this CPU
        const auto ranges = all_blocks(sq);
        Call c = make_call(s, sq, ranges);
        ASSERT_EQ(nq_attention_decode(sq.ctx.get(), &c.desc, nullptr, 0, nullptr), NQ_OK) << nq_last_error();
        const Errors e = compare(s, sq, c, ranges);
        if (std::getenv("NQ_TEST_VERBOSE"))
            std::printf("%s isa %s: out rel err %.3g, lse err %.3g\n", what, names[k], e.out, e.lse);
        EXPECT_LE(e.out, out_bound(s.dt)) << what << " isa " << names[k];
        EXPECT_LE(e.lse, 2e-5) << what << " isa " << names[k];
    }
}

TEST(Attention, GqaRatiosAndHeadDims) {
    for (uint32_t g : {1u, 2u, 4u, 8u})
        for (uint32_t D : {64u, 128u, 256u}) {
            Spec s;
            s.group = g;
            s.D = D;
            s.kv = g == 8 ? 1 : 2;  // 8 query heads on one KV head: MQA
            s.seqs = {{70}};
            check(s, ("group " + std::to_string(g) + " D " + std::to_string(D)).c_str());
        }
}

TEST(Attention, OddHeadDimsAndBits) {
    for (uint32_t D : {8u, 24u, 80u}) {
        for (uint32_t kb : {1u, 2u, 4u, 5u, 8u}) {
            Spec s;
            s.D = D;
            s.k_bits = kb;
            s.v_bits = kb == 8 ? 6 : kb;
            s.seqs = {{33}};
            check(s, ("D " + std::to_string(D) + " bits " + std::to_string(kb)).c_str());
        }
    }
    Spec s;
    s.codec = NQ_CODEC_SCALAR;
    check(s, "scalar codec");
}

// The SIMD kernels decode codes of at most 4 bits per dimension in registers, 16 groups
// (128 dims) per vector, and work on blocks of 4, 2 and 1 query rows: every bit width
// of that path with both codecs, over whole, partial and several group vectors, with 7
// rows per KV head (blocks 4 + 2 + 1) and 6 rows (two query tokens of 3 heads).
TEST(Attention, PackedBitsGroupVectorsAndRowBlocks) {
    for (nq_codec codec : {NQ_CODEC_E8, NQ_CODEC_SCALAR})
        for (uint32_t bits : {1u, 2u, 3u, 4u})
            for (uint32_t D : {80u, 128u, 256u, 384u}) {
                Spec s;
                s.codec = codec;
                s.k_bits = bits;
                s.v_bits = bits == 1 ? 1 : 5 - bits;
                s.D = D;
                s.kv = 1;
                s.group = D == 128 ? 7 : 3;
                s.q_tokens = D == 128 ? 1 : 2;
                s.seqs = {{37}};
                check(s, ((codec == NQ_CODEC_E8 ? std::string("e8") : std::string("scalar")) + " bits " +
                          std::to_string(bits) + " D " + std::to_string(D))
                             .c_str());
            }
}

// Sequences longer than the CPU kernels' chunk of 256 tokens: the running maximum of
// the online softmax moves between chunks, and keys stored with RoPE removed are
// decoded a chunk at a time.
TEST(Attention, LongSequencesOverSeveralChunks) {
    for (nq_rope_mode rm : {NQ_ROPE_KEEP, NQ_ROPE_REMOVE}) {
        Spec s;
        s.rope = rm;
        s.D = 128;
        s.group = 4;
        s.seqs = {{1100}, {530, 300}};
        check(s, rm == NQ_ROPE_KEEP ? "long, rope kept" : "long, rope removed");
    }
}

TEST(Attention, RopeModesSinksWindowAndSeveralBlocks) {
    for (nq_rope_mode rm : {NQ_ROPE_NONE, NQ_ROPE_KEEP, NQ_ROPE_REMOVE}) {
        Spec s;
        s.rope = rm;
        s.D = 128;
        s.group = 4;
        s.fp16_sinks = 4;
        s.fp16_window = 16;
        s.seqs = {{300, 64, 64, 17}, {90}, {40, 64}};  // ragged batch, prefill + chunks
        check(s, "rope mode");
    }
}

TEST(Attention, EvictedBlocks) {
    for (nq_evict_mode em : {NQ_EVICT_PER_HEAD, NQ_EVICT_HEAD_SHARED}) {
        for (nq_rope_mode rm : {NQ_ROPE_KEEP, NQ_ROPE_REMOVE}) {
            Spec s;
            s.em = em;
            s.rope = rm;
            s.evict = 0.5f;
            s.fp16_sinks = 4;
            s.fp16_window = 8;
            s.kv = 4;
            s.seqs = {{200, 64}, {150}};
            s.positions = true;
            s.q_tokens = 3;
            s.qpos_back = 40;  // causal: later keys hidden from earlier query tokens
            check(s, "evicted");
        }
    }
}

TEST(Attention, MasksWindowSoftcapScaleAndDtypes) {
    for (nq_dtype dt : {NQ_DTYPE_F32, NQ_DTYPE_F16, NQ_DTYPE_BF16}) {
        Spec s;
        s.dt = dt;
        s.q_tokens = 4;
        s.positions = true;
        s.qpos_back = 7;
        s.window = 50;
        s.softcap = 5.0f;
        s.scale = 0.3f;
        s.fp16_window = 8;
        s.seqs = {{130, 64}, {60}};
        check(s, "masks");
    }
}

TEST(Attention, AllMaskedQueryAndSplits) {
    for (uint32_t threads : {1u, 3u}) {
        Spec s;
        s.threads = threads;
        s.splits = 3;
        s.q_tokens = 2;
        s.positions = true;
        s.qpos_back = 100000;  // every key lies after the queries
        s.seqs = {{50}, {20}};
        for (nq_cpu_isa isa : {NQ_ISA_SCALAR, NQ_ISA_AUTO}) {
            s.isa = isa;
            Seqs sq = build(s);
            const auto ranges = all_blocks(sq);
            Call c = make_call(s, sq, ranges);
            ASSERT_EQ(nq_attention_decode(sq.ctx.get(), &c.desc, nullptr, 0, nullptr), NQ_OK) << nq_last_error();
            const Errors e = compare(s, sq, c, ranges);
            EXPECT_EQ(e.masked_rows, e.rows);
        }
    }
    // Splits against one piece, with threads.
    for (uint32_t splits : {2u, 5u, 16u}) {
        Spec s;
        s.threads = 2;
        s.splits = splits;
        s.fp16_sinks = 2;
        s.fp16_window = 5;
        s.seqs = {{100, 20}, {7}, {64, 64}};
        check(s, "splits");
    }
}

// Attention over blocks [0, k) merged with attention over [k, n) equals attention over all.
TEST(Attention, MergeMatchesTheUnion) {
    Spec s;
    s.group = 4;
    s.q_tokens = 2;
    s.fp16_window = 4;
    s.seqs = {{80, 64, 64}, {50, 30}};
    Seqs sq = build(s);
    const auto all = all_blocks(sq);
    std::vector<std::pair<size_t, size_t>> first, second;
    for (const auto &r : all) {
        first.emplace_back(0, 1);
        second.emplace_back(1, r.second);
    }
    Call a = make_call(s, sq, first);
    ASSERT_EQ(nq_attention_decode(sq.ctx.get(), &a.desc, nullptr, 0, nullptr), NQ_OK) << nq_last_error();
    Call b = make_call(s, sq, second);
    b.q = a.q;
    b.qd = a.qd;
    b.desc.q = b.q.data();
    ASSERT_EQ(nq_attention_decode(sq.ctx.get(), &b.desc, nullptr, 0, nullptr), NQ_OK) << nq_last_error();
    Call u = make_call(s, sq, all);
    u.q = a.q;
    u.qd = a.qd;
    u.desc.q = u.q.data();
    ASSERT_EQ(nq_attention_decode(sq.ctx.get(), &u.desc, nullptr, 0, nullptr), NQ_OK) << nq_last_error();
    const size_t rows = a.lse.size();
    std::vector<float> oa(a.out.size() / 4), ob(oa.size());
    std::memcpy(oa.data(), a.out.data(), a.out.size());
    std::memcpy(ob.data(), b.out.data(), b.out.size());
    ASSERT_EQ(nq_attention_merge(oa.data(), a.lse.data(), ob.data(), b.lse.data(), rows, s.D), NQ_OK);
    std::memcpy(a.out.data(), oa.data(), a.out.size());
    const Errors e = compare(s, sq, a, all);
    EXPECT_LE(e.out, 1e-5);
    EXPECT_LE(e.lse, 2e-5);
    // A part with no visible key contributes nothing; both empty stay empty.
    std::vector<float> o1(8, 1.0f), o2(8, 2.0f), l1(1, -INFINITY), l2(1, 0.5f);
    ASSERT_EQ(nq_attention_merge(o1.data(), l1.data(), o2.data(), l2.data(), 1, 8), NQ_OK);
    EXPECT_EQ(o1[3], 2.0f);
    EXPECT_EQ(l1[0], 0.5f);
    std::vector<float> e1(8, 0.0f), e2(8, 0.0f), m1(1, -INFINITY), m2(1, -INFINITY);
    ASSERT_EQ(nq_attention_merge(e1.data(), m1.data(), e2.data(), m2.data(), 1, 8), NQ_OK);
    EXPECT_TRUE(std::isinf(m1[0]) && m1[0] < 0);
    EXPECT_EQ(nq_attention_merge(e1.data(), nullptr, e2.data(), m2.data(), 1, 8), NQ_ERR_INVALID_ARGUMENT);
    m1[0] = NAN;
    EXPECT_EQ(nq_attention_merge(e1.data(), m1.data(), e2.data(), m2.data(), 1, 8), NQ_ERR_INVALID_ARGUMENT);
}

// A caller's workspace of exactly the reported size gives the same result as none.
TEST(Attention, CallerWorkspace) {
    Spec s;
    s.threads = 2;
    s.seqs = {{90}, {40}};
    Seqs sq = build(s);
    const auto r = all_blocks(sq);
    Call a = make_call(s, sq, r);
    size_t bytes = 0;
    ASSERT_EQ(nq_attention_workspace_size(sq.ctx.get(), &a.desc, &bytes), NQ_OK) << nq_last_error();
    ASSERT_GT(bytes, 0u);
    std::vector<uint8_t> ws(bytes + 64);
    void *aligned = reinterpret_cast<void *>(((uintptr_t)ws.data() + 63) & ~(uintptr_t)63);
    EXPECT_EQ(nq_attention_decode(sq.ctx.get(), &a.desc, aligned, bytes - 1, nullptr), NQ_ERR_BUFFER_TOO_SMALL);
    ASSERT_EQ(nq_attention_decode(sq.ctx.get(), &a.desc, aligned, bytes, nullptr), NQ_OK) << nq_last_error();
    const Errors e = compare(s, sq, a, r);
    EXPECT_LE(e.out, 1e-5);
}

// Every validated field: the status and a message naming it.
TEST(Attention, BadInput) {
    Spec s;
    s.seqs = {{40}};
    Seqs sq = build(s);
    const auto r = all_blocks(sq);
    nq_context *ctx = sq.ctx.get();
    auto expect = [&](const Call &c, nq_status want, const char *field) {
        EXPECT_EQ(nq_attention_decode(ctx, &c.desc, nullptr, 0, nullptr), want) << field;
        EXPECT_NE(std::string(nq_last_error()).find(field), std::string::npos) << nq_last_error();
    };
    {
        Call c = make_call(s, sq, r);
        c.desc.size = 0;
        expect(c, NQ_ERR_INVALID_ARGUMENT, "nq_attention_desc");
    }
    {
        Call c = make_call(s, sq, r);
        c.desc.reserved0 = 1;
        expect(c, NQ_ERR_INVALID_ARGUMENT, "reserved0");
    }
    {
        Call c = make_call(s, sq, r);
        c.desc.memory = (nq_memory)7;
        expect(c, NQ_ERR_INVALID_ARGUMENT, "desc.memory");
    }
    {
        Call c = make_call(s, sq, r);
        c.desc.dtype = (nq_dtype)0;
        expect(c, NQ_ERR_UNSUPPORTED, "desc.dtype");
    }
    for (uint32_t qt : {0u, 65u}) {
        Call c = make_call(s, sq, r);
        c.desc.q_tokens = qt;
        expect(c, NQ_ERR_INVALID_ARGUMENT, "desc.q_tokens");
    }
    for (float bad : {-1.0f, (float)INFINITY, (float)NAN}) {
        Call c = make_call(s, sq, r);
        c.desc.scale = bad;
        expect(c, NQ_ERR_INVALID_ARGUMENT, "desc.scale");
        Call d = make_call(s, sq, r);
        d.desc.softcap = bad;
        expect(d, NQ_ERR_INVALID_ARGUMENT, "desc.softcap");
    }
    {
        Call c = make_call(s, sq, r);
        c.desc.window = 10;
        c.desc.q_positions = nullptr;
        expect(c, NQ_ERR_INVALID_ARGUMENT, "desc.window");
    }
    {
        Call c = make_call(s, sq, r);
        c.desc.num_splits = 100000;
        expect(c, NQ_ERR_INVALID_ARGUMENT, "desc.num_splits");
    }
    {
        Call c = make_call(s, sq, r);
        c.desc.q = nullptr;
        expect(c, NQ_ERR_INVALID_ARGUMENT, "desc.q");
        Call d = make_call(s, sq, r);
        d.desc.out = nullptr;
        expect(d, NQ_ERR_INVALID_ARGUMENT, "desc.out");
        Call e = make_call(s, sq, r);
        e.desc.block_indptr = nullptr;
        expect(e, NQ_ERR_INVALID_ARGUMENT, "desc.block_indptr");
        Call f = make_call(s, sq, r);
        f.desc.block_images = nullptr;
        expect(f, NQ_ERR_INVALID_ARGUMENT, "desc.block_images");
    }
    {
        Call c = make_call(s, sq, r);
        c.desc.out = c.out.data() + 1;
        expect(c, NQ_ERR_INVALID_ARGUMENT, "desc.out");
        Call d = make_call(s, sq, r);
        d.desc.lse = reinterpret_cast<float *>(reinterpret_cast<uint8_t *>(d.lse.data()) + 2);
        expect(d, NQ_ERR_INVALID_ARGUMENT, "desc.lse");
    }
    {
        Call c = make_call(s, sq, r);
        c.desc.out_stride_head = 1;  // heads overlap
        expect(c, NQ_ERR_INVALID_ARGUMENT, "desc.out_stride");
    }
    {
        Call c = make_call(s, sq, r);
        c.indptr[1] = 0;
        c.indptr[0] = 1;
        expect(c, NQ_ERR_INVALID_ARGUMENT, "desc.block_indptr");
    }
    {
        Call c = make_call(s, sq, r);
        c.images[0] = nullptr;
        expect(c, NQ_ERR_INVALID_ARGUMENT, "desc.block_images[0]");
    }
    {
        Call c = make_call(s, sq, r);
        std::vector<uint8_t> img(256, 0);
        c.images[0] = img.data();
        expect(c, NQ_ERR_VERSION, "desc.block_images[0]");
        // A real header with a field broken: header_validate names it.
        const void *src;
        size_t bytes;
        ASSERT_EQ(nq_block_data(nq_sequence_block(sq.seqs[0].get(), 0), &src, &bytes), NQ_OK);
        std::vector<uint8_t> copy((const uint8_t *)src, (const uint8_t *)src + bytes);
        copy[13] = 9;  // k_bits
        c.images[0] = copy.data();
        expect(c, NQ_ERR_CORRUPT, "k_bits");
    }
    {
        // Blocks of another shape than the context.
        Spec o = s;
        o.D = 32;
        Seqs other = build(o);
        Call c = make_call(s, sq, r);
        const void *src;
        size_t bytes;
        ASSERT_EQ(nq_block_data(nq_sequence_block(other.seqs[0].get(), 0), &src, &bytes), NQ_OK);
        c.images[0] = src;
        expect(c, NQ_ERR_INVALID_ARGUMENT, "desc.block_images[0]");
    }
    {
        Call c = make_call(s, sq, r);
        c.desc.memory = NQ_MEMORY_CUDA;
        EXPECT_NE(nq_attention_decode(ctx, &c.desc, nullptr, 0, nullptr), NQ_OK);
    }
    {
        Call c = make_call(s, sq, r);
        size_t bytes = 0;
        EXPECT_EQ(nq_attention_workspace_size(ctx, &c.desc, nullptr), NQ_ERR_INVALID_ARGUMENT);
        EXPECT_EQ(nq_attention_workspace_size(nullptr, &c.desc, &bytes), NQ_ERR_INVALID_ARGUMENT);
        EXPECT_EQ(nq_attention_decode(nullptr, &c.desc, nullptr, 0, nullptr), NQ_ERR_INVALID_ARGUMENT);
        EXPECT_EQ(nq_attention_decode(ctx, nullptr, nullptr, 0, nullptr), NQ_ERR_INVALID_ARGUMENT);
        std::vector<uint8_t> ws(1024);
        void *odd = ws.data() + (((uintptr_t)ws.data() % 64) == 1 ? 2 : 1);
        EXPECT_EQ(nq_attention_decode(ctx, &c.desc, odd, 512, nullptr), NQ_ERR_INVALID_ARGUMENT);
        // No sequences: nothing to do.
        c.desc.num_seqs = 0;
        EXPECT_EQ(nq_attention_decode(ctx, &c.desc, nullptr, 0, nullptr), NQ_OK);
    }
}

}  // namespace
}  // namespace nqt
