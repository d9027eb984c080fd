// Key-centred blocks (FORMAT.md 1.8) through the SIMD kernels: the AVX2 and AVX-512
// paths (key-mean pass, centred encode, decode with the mean added back) give the
// scalar reference's bytes and decoded rows, at 1, 2 and 3 threads, over input dtypes,
// RoPE handling (none, kept, removed with either pairing, partial rotary), eviction
// (head-shared rows and per-head kept tokens), fp16 sinks/window and head dims. An ISA
// the machine lacks is reported and skipped (the context falls back to another one).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../backends/cpu/cpu_dispatch.h"
#include "../src/core/hadamard.h"
#include "../src/core/half.h"
#include "nexusquant.h"

namespace {

struct CtxFree {
    void operator()(nq_context *c) const { nq_context_free(c); }
};
struct BlockFree {
    void operator()(nq_block *b) const { nq_block_free(b); }
};
using Ctx = std::unique_ptr<nq_context, CtxFree>;
using Block = std::unique_ptr<nq_block, BlockFree>;

struct Case {
    uint32_t heads, head_dim, tokens;
    nq_dtype dtype;
    nq_rope_mode rope;
    nq_rope_pairing pairing;
    uint32_t rotary_dims;  // 0 = head_dim
    bool evict;            // per-head eviction (kept tokens differ between heads)
    bool raw;              // fp16 sinks and window
    nq_codec codec;
    uint32_t k_bits;
    std::string name() const {
        const char *dt = dtype == NQ_DTYPE_F16 ? "f16" : dtype == NQ_DTYPE_BF16 ? "bf16" : "f32";
        const char *rp = rope == NQ_ROPE_NONE ? "none" : rope == NQ_ROPE_KEEP ? "keep" : "remove";
        return "H" + std::to_string(heads) + " D" + std::to_string(head_dim) + " T" + std::to_string(tokens) + " " +
               dt + " rope " + rp + (rope == NQ_ROPE_REMOVE ? (pairing == NQ_ROPE_INTERLEAVED ? "/interleaved" : "/split") : "") +
               (rotary_dims ? " rotary " + std::to_string(rotary_dims) : "") + (evict ? " evict" : "") +
               (raw ? " sinks+window" : "") + (codec == NQ_CODEC_SCALAR ? " scalar-codec" : "") + " K" +
               std::to_string(k_bits);
    }
};

nq_config config(const Case &c, nq_cpu_isa isa, uint32_t threads) {
    nq_config cfg;
    nq_config_init(&cfg);
    cfg.num_kv_heads = c.heads;
    cfg.head_dim = c.head_dim;
    cfg.preset = NQ_PRESET_CUSTOM;
    cfg.codec = c.codec;
    cfg.k_bits = c.k_bits;
    cfg.v_bits = 2;
    cfg.evict_fraction = c.evict ? 0.3f : 0.0f;
    cfg.evict_mode = NQ_EVICT_PER_HEAD;
    cfg.sink_tokens = c.raw ? 3 : 0;
    cfg.recent_window = c.raw ? 5 : 0;
    cfg.fp16_sinks = c.raw ? 2 : 0;
    cfg.fp16_window = c.raw ? 3 : 0;
    cfg.rope.mode = c.rope;
    cfg.rope.pairing = c.pairing;
    cfg.rope.rotary_dims = c.rotary_dims;
    cfg.cpu_isa = isa;
    cfg.num_threads = threads;
    cfg.key_centering = 1;
    return cfg;
}

// Keys with a per-channel offset (what centring removes) plus per-token noise, stored
// in the case's dtype; positions with gaps.
struct Input {
    std::vector<uint8_t> k, v;
    std::vector<int64_t> pos;
};

void put(std::vector<uint8_t> &dst, size_t i, float x, nq_dtype dt) {
    if (dt == NQ_DTYPE_F32) {
        std::memcpy(&dst[i * 4], &x, 4);
        return;
    }
    const uint16_t h = dt == NQ_DTYPE_F16 ? nq::f32_to_f16(x) : nq::f32_to_bf16(x);
    std::memcpy(&dst[i * 2], &h, 2);
}

Input make_input(const Case &c, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> n(0.0f, 1.0f);
    const size_t es = c.dtype == NQ_DTYPE_F32 ? 4 : 2, count = (size_t)c.heads * c.tokens * c.head_dim;
    Input in;
    in.k.resize(count * es);
    in.v.resize(count * es);
    std::vector<float> offset((size_t)c.heads * c.head_dim);
    for (float &o : offset) o = 8.0f * n(rng);
    for (uint32_t h = 0; h < c.heads; ++h)
        for (uint32_t t = 0; t < c.tokens; ++t)
            for (uint32_t d = 0; d < c.head_dim; ++d) {
                const size_t i = ((size_t)h * c.tokens + t) * c.head_dim + d;
                put(in.k, i, offset[(size_t)h * c.head_dim + d] + (0.2f + (float)(t % 7)) * n(rng), c.dtype);
                put(in.v, i, n(rng), c.dtype);
            }
    in.pos.resize(c.tokens);
    for (uint32_t t = 0; t < c.tokens; ++t) in.pos[t] = 37 + 3 * t;
    return in;
}

struct Result {
    std::string isa;
    std::vector<uint8_t> image, k, v;
};

// The case's K/V as one contiguous item (the input's arrays, not copied).
nq_kv_desc desc_of(const Case &c, Input &in) {
    nq_kv_desc d;
    nq_kv_desc_init(&d);
    d.dtype = c.dtype;
    d.num_tokens = c.tokens;
    d.k = in.k.data();
    d.v = in.v.data();
    d.positions = in.pos.data();
    nq_layout_contiguous(&d.k_layout, c.tokens, c.head_dim);
    nq_layout_contiguous(&d.v_layout, c.tokens, c.head_dim);
    return d;
}

Result run(const Case &c, Input &in, nq_cpu_isa isa, uint32_t threads) {
    Result r;
    nq_config cfg = config(c, isa, threads);
    nq_context *p = nullptr;
    EXPECT_EQ(nq_context_create(&cfg, &p), NQ_OK) << nq_last_error();
    Ctx ctx(p);
    if (!ctx) return r;
    r.isa = nq_context_cpu_isa(ctx.get());
    nq_kv_desc d = desc_of(c, in);
    nq_block *b = nullptr;
    EXPECT_EQ(nq_compress_kv(ctx.get(), &d, nullptr, nullptr, &b), NQ_OK) << nq_last_error();
    Block blk(b);
    if (!blk) return r;
    const void *data = nullptr;
    size_t bytes = 0;
    EXPECT_EQ(nq_block_data(blk.get(), &data, &bytes), NQ_OK);
    r.image.assign(static_cast<const uint8_t *>(data), static_cast<const uint8_t *>(data) + bytes);
    nq_block_info info{};
    info.size = sizeof info;
    EXPECT_EQ(nq_block_get_info(blk.get(), &info), NQ_OK);
    EXPECT_EQ(info.key_mean_bytes, (uint64_t)c.heads * c.head_dim * 2);
    // Decode in the input's dtype: all kept tokens, then a range that starts and ends
    // inside coded tiles (the two must agree on the overlap).
    const uint32_t kept = info.tokens_kept;
    const size_t es = c.dtype == NQ_DTYPE_F32 ? 4 : 2;
    r.k.assign((size_t)c.heads * kept * c.head_dim * es, 0xcd);
    r.v.assign(r.k.size(), 0xcd);
    nq_kv_desc o;
    nq_kv_desc_init(&o);
    o.dtype = c.dtype;
    o.num_tokens = kept;
    o.k = r.k.data();
    o.v = r.v.data();
    nq_layout_contiguous(&o.k_layout, kept, c.head_dim);
    nq_layout_contiguous(&o.v_layout, kept, c.head_dim);
    EXPECT_EQ(nq_decode_block(ctx.get(), blk.get(), 0, kept, &o, nullptr), NQ_OK) << nq_last_error();
    const uint32_t b0 = 5, b1 = kept - 4, n = b1 - b0;
    std::vector<uint8_t> pk((size_t)c.heads * n * c.head_dim * es), pv(pk.size());
    o.num_tokens = n;
    o.k = pk.data();
    o.v = pv.data();
    nq_layout_contiguous(&o.k_layout, n, c.head_dim);
    nq_layout_contiguous(&o.v_layout, n, c.head_dim);
    EXPECT_EQ(nq_decode_block(ctx.get(), blk.get(), b0, b1, &o, nullptr), NQ_OK) << nq_last_error();
    const size_t row = (size_t)c.head_dim * es;
    for (uint32_t h = 0; h < c.heads; ++h)
        for (uint32_t j = b0; j < b1; ++j) {
            const size_t full = ((size_t)h * kept + j) * row, part = ((size_t)h * n + (j - b0)) * row;
            EXPECT_EQ(std::memcmp(&r.k[full], &pk[part], row), 0) << c.name() << " head " << h << " token " << j;
            EXPECT_EQ(std::memcmp(&r.v[full], &pv[part], row), 0) << c.name() << " head " << h << " token " << j;
        }
    return r;
}

void check_case(const Case &c, uint32_t seed) {
    Input in = make_input(c, seed);
    const Result ref = run(c, in, NQ_ISA_SCALAR, 1);
    ASSERT_EQ(ref.isa, "scalar");
    ASSERT_FALSE(ref.image.empty()) << c.name();
    for (nq_cpu_isa isa : {NQ_ISA_AVX2, NQ_ISA_AVX512}) {
        const char *want = isa == NQ_ISA_AVX2 ? "avx2" : "avx512";
        for (uint32_t threads : {1u, 2u, 3u}) {
            const Result got = run(c, in, isa, threads);
            if (got.isa != want) {  // not on this machine (or not built)
                if (threads == 1) std::printf("[key centering simd] %s not available here, skipped\n", want);
                break;
            }
            const std::string what = c.name() + " on " + got.isa + ", " + std::to_string(threads) + " thread(s)";
            EXPECT_TRUE(got.image == ref.image) << what << ": other block bytes";
            EXPECT_TRUE(got.k == ref.k) << what << ": other decoded keys";
            EXPECT_TRUE(got.v == ref.v) << what << ": other decoded values";
        }
    }
}

// Every combination of the dimensions that route through different kernel paths.
TEST(KeyCenteringSimd, SameBytesAsReference) {
    uint32_t seed = 100;
    for (uint32_t D : {64u, 128u, 256u})
        for (nq_dtype dt : {NQ_DTYPE_F16, NQ_DTYPE_BF16, NQ_DTYPE_F32})
            for (int rope = 0; rope < 4; ++rope)
                for (int evict = 0; evict < 2; ++evict)
                    for (int raw = 0; raw < 2; ++raw) {
                        Case c{4, D, 93, dt, NQ_ROPE_REMOVE, NQ_ROPE_SPLIT_HALF, 0, evict != 0, raw != 0,
                               NQ_CODEC_E8, 3};
                        if (rope == 0) c.rope = NQ_ROPE_NONE;
                        if (rope == 1) c.rope = NQ_ROPE_KEEP;
                        if (rope == 3) c.pairing = NQ_ROPE_INTERLEAVED;
                        SCOPED_TRACE(c.name());
                        check_case(c, seed++);
                    }
}

// Shapes off the main path: head_dim 96 and 80 (Hadamard blocks smaller than the head), 512,
// partial rotary, many heads (more than one key-mean task per thread), the scalar codec,
// other key bits, one partial tile (too few tokens for the thread pool), and blocks of
// several key-mean runs.
TEST(KeyCenteringSimd, OtherShapes) {
    const Case cases[] = {
        {4, 96, 61, NQ_DTYPE_F32, NQ_ROPE_REMOVE, NQ_ROPE_SPLIT_HALF, 0, true, true, NQ_CODEC_E8, 3},
        {3, 80, 50, NQ_DTYPE_BF16, NQ_ROPE_REMOVE, NQ_ROPE_INTERLEAVED, 0, false, true, NQ_CODEC_E8, 4},
        {4, 128, 70, NQ_DTYPE_F16, NQ_ROPE_REMOVE, NQ_ROPE_SPLIT_HALF, 64, true, false, NQ_CODEC_E8, 3},
        {4, 64, 70, NQ_DTYPE_F32, NQ_ROPE_REMOVE, NQ_ROPE_INTERLEAVED, 32, false, true, NQ_CODEC_E8, 2},
        {19, 64, 40, NQ_DTYPE_F16, NQ_ROPE_REMOVE, NQ_ROPE_SPLIT_HALF, 0, true, true, NQ_CODEC_E8, 3},
        {2, 128, 80, NQ_DTYPE_F32, NQ_ROPE_REMOVE, NQ_ROPE_SPLIT_HALF, 0, false, true, NQ_CODEC_SCALAR, 4},
        {2, 256, 64, NQ_DTYPE_BF16, NQ_ROPE_NONE, NQ_ROPE_SPLIT_HALF, 0, true, false, NQ_CODEC_E8, 8},
        {1, 64, 12, NQ_DTYPE_F32, NQ_ROPE_REMOVE, NQ_ROPE_SPLIT_HALF, 0, false, false, NQ_CODEC_E8, 1},
        {3, 512, 45, NQ_DTYPE_F32, NQ_ROPE_REMOVE, NQ_ROPE_SPLIT_HALF, 0, true, true, NQ_CODEC_E8, 3},
        // Several key-mean runs (FORMAT.md 1.8: 256 coded slots each), the last one partial.
        {3, 128, 700, NQ_DTYPE_F16, NQ_ROPE_REMOVE, NQ_ROPE_SPLIT_HALF, 0, true, true, NQ_CODEC_E8, 3},
        {2, 64, 530, NQ_DTYPE_BF16, NQ_ROPE_KEEP, NQ_ROPE_SPLIT_HALF, 0, false, false, NQ_CODEC_E8, 3},
    };
    uint32_t seed = 500;
    for (const Case &c : cases) {
        SCOPED_TRACE(c.name());
        check_case(c, seed++);
    }
}

// A non-finite coded key poisons its head's key mean (so every coded key of that head);
// every ISA and thread count fails with the reference's message, naming that head.
TEST(KeyCenteringSimd, NonFiniteKeyNamesTheRow) {
    const Case c{4, 64, 60, NQ_DTYPE_F32, NQ_ROPE_REMOVE, NQ_ROPE_SPLIT_HALF, 0, false, true, NQ_CODEC_E8, 3};
    Input in = make_input(c, 77);
    const float inf = INFINITY;
    std::memcpy(&in.k[(((size_t)2 * c.tokens + 20) * c.head_dim + 5) * 4], &inf, 4);
    std::string ref;
    for (nq_cpu_isa isa : {NQ_ISA_SCALAR, NQ_ISA_AVX2, NQ_ISA_AVX512})
        for (uint32_t threads : {1u, 3u}) {
            nq_config cfg = config(c, isa, threads);
            nq_context *p = nullptr;
            ASSERT_EQ(nq_context_create(&cfg, &p), NQ_OK) << nq_last_error();
            Ctx ctx(p);
            nq_kv_desc d = desc_of(c, in);
            nq_block *b = nullptr;
            EXPECT_EQ(nq_compress_kv(ctx.get(), &d, nullptr, nullptr, &b), NQ_ERR_INVALID_ARGUMENT)
                << nq_context_cpu_isa(ctx.get());
            EXPECT_EQ(b, nullptr);
            const std::string msg = nq_last_error();
            EXPECT_NE(msg.find("kv.k: head 2 token"), std::string::npos) << nq_context_cpu_isa(ctx.get()) << ": " << msg;
            if (ref.empty()) ref = msg;
            EXPECT_EQ(msg, ref) << nq_context_cpu_isa(ctx.get()) << ", " << threads << " thread(s)";
            nq_block_free(b);
        }
}

// The kernels' key-mean sums themselves, before the f16 rounding that hides most
// differences: rows of magnitudes from 2^-30 to 2^30 (one per row) make float64 addition inexact, so
// any other summation order than the reference's (slot after slot from 0.0) shows.
TEST(KeyCenteringSimd, KernelSumsAreTheReferenceFloat64Sums) {
    std::mt19937 rng(42);
    std::normal_distribution<float> n(0.0f, 1.0f);
    std::uniform_int_distribution<int> e(-30, 30);
    for (nq_cpu_isa isa : {NQ_ISA_AVX2, NQ_ISA_AVX512}) {
        const nq::CpuKernels *kn = nq::cpu_kernels(isa);
        if (!kn || nq::cpu_isa_detected() < isa) {
            std::printf("[key centering simd] %s kernels not available here, skipped\n",
                        isa == NQ_ISA_AVX2 ? "avx2" : "avx512");
            continue;
        }
        for (uint32_t D : {64u, 96u, 128u}) {
            const uint32_t W = kn->lanes, tiles = 3;
            std::vector<float> rows((size_t)tiles * W * D);
            for (size_t r = 0; r < (size_t)tiles * W; ++r) {  // one magnitude per row: it survives the rotation
                const int ex = e(rng);
                for (uint32_t d = 0; d < D; ++d) rows[r * D + d] = std::ldexp(n(rng), ex);
            }
            std::vector<double> want(D, 0.0), got((D + W - 1) / W * W, 0.0);
            std::vector<float> y(D);
            for (uint32_t t = 0; t < tiles * W - 3; ++t) {  // the last tile is partial
                std::memcpy(y.data(), &rows[(size_t)t * D], D * sizeof(float));
                nq::hadamard_forward(y.data(), D);
                for (uint32_t d = 0; d < D; ++d) want[d] += (double)y[d];
            }
            alignas(64) float work[512 * 16];
            nq::FpEnvGuard env;
            for (uint32_t b = 0; b < tiles; ++b) {
                nq::EncodeTile t{};
                t.lanes = b + 1 < tiles ? W : W - 3;
                t.head_dim = D;
                t.codec = NQ_CODEC_E8;
                t.bits = 3;
                t.dtype = NQ_DTYPE_F32;
                for (uint32_t w = 0; w < t.lanes; ++w) t.rows[w] = &rows[((size_t)b * W + w) * D];
                t.work = work;
                kn->key_sum(t, got.data());
            }
            for (uint32_t d = 0; d < D; ++d)
                ASSERT_EQ(std::memcmp(&got[d], &want[d], sizeof(double)), 0)
                    << kn->name << " D " << D << " dim " << d << ": " << got[d] << " vs " << want[d];
            for (uint32_t d = D; d < got.size(); ++d) EXPECT_EQ(got[d], 0.0) << "padding dim " << d;
        }
    }
}

}  // namespace
