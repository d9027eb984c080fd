// Determinism: the same input gives the same bytes, twice, from another context, from
// several threads at once, and whatever floating-point mode the caller runs in
// (flush-to-zero, denormals-are-zero, any rounding direction): the library's results
// may not depend on the caller's MXCSR, and the caller's mode must survive the call.
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "api_harness.h"

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define NQ_TEST_MXCSR 1
#endif

using namespace nqt;

namespace {

struct Item {
    nq_config cfg;
    std::unique_ptr<Tensor> k, v, q;
    nq_score_desc scores;
    bool use_scores = false;
    uint32_t H, T, D;
    int64_t start;
};

// Three configurations that between them exercise every stage that does float math:
// RoPE tables (llama3, YaRN, dynamic NTK), the target-ratio planner, query attention
// with its exp, key norms, both codecs, subnormal inputs.
std::vector<Item> make_items() {
    std::vector<Item> items(3);
    {
        Item &it = items[0];
        it.H = 2, it.T = 80, it.D = 64, it.start = 0;
        nq_config_init(&it.cfg);
        it.cfg.num_kv_heads = it.H;
        it.cfg.head_dim = it.D;
        it.cfg.rope.scaling = NQ_ROPE_SCALING_LLAMA3;
        it.cfg.rope.theta = 500000;
        it.cfg.rope.factor = 8;
        it.cfg.rope.original_max_position = 64;
        it.k.reset(new Tensor(NQ_DTYPE_F32, Layout::HTD, it.H, it.T, it.D));
        it.v.reset(new Tensor(NQ_DTYPE_F32, Layout::HTD, it.H, it.T, it.D));
    }
    {
        Item &it = items[1];
        it.H = 2, it.T = 120, it.D = 32, it.start = 5000;
        nq_config_init(&it.cfg);
        it.cfg.num_kv_heads = it.H;
        it.cfg.num_q_heads = 2 * it.H;
        it.cfg.head_dim = it.D;
        it.cfg.target_ratio = 13.7f;
        it.cfg.rope.scaling = NQ_ROPE_SCALING_YARN;
        it.cfg.rope.factor = 4;
        it.cfg.rope.original_max_position = 4096;
        it.cfg.rope.pairing = NQ_ROPE_INTERLEAVED;
        it.k.reset(new Tensor(NQ_DTYPE_BF16, Layout::THD, it.H, it.T, it.D));
        it.v.reset(new Tensor(NQ_DTYPE_BF16, Layout::THD, it.H, it.T, it.D));
        it.q.reset(new Tensor(NQ_DTYPE_F32, Layout::HTD, 2 * it.H, 6, it.D));
        Values Q = random_values(2 * it.H, 6, it.D, Dist::Gauss, 3.0);
        for (uint32_t d = 0; d < it.D; d += 3) Q.at(1, 2, d) = 1e-41;  // subnormal query entries
        store(*it.q, Q);
        nq_score_desc_init(&it.scores);
        it.scores.kind = NQ_SCORES_QUERIES;
        it.scores.queries = it.q->base();
        it.scores.query_dtype = NQ_DTYPE_F32;
        it.scores.num_queries = 6;
        it.scores.q_stride_head = it.q->layout().stride_head;
        it.scores.q_stride_token = it.q->layout().stride_token;
        it.use_scores = true;
    }
    {
        Item &it = items[2];
        it.H = 3, it.T = 70, it.D = 48, it.start = 3000;
        nq_config_init(&it.cfg);
        it.cfg.num_kv_heads = it.H;
        it.cfg.head_dim = it.D;
        it.cfg.codec = NQ_CODEC_SCALAR;
        it.cfg.preset = NQ_PRESET_BALANCED;
        it.cfg.evict_mode = NQ_EVICT_HEAD_SHARED;
        it.cfg.rope.scaling = NQ_ROPE_SCALING_DYNAMIC_NTK;
        it.cfg.rope.factor = 2;
        it.cfg.rope.original_max_position = 2048;
        it.cfg.rope.rotary_dims = 32;
        it.k.reset(new Tensor(NQ_DTYPE_F16, Layout::PagedHND, it.H, it.T, it.D, 16));
        it.v.reset(new Tensor(NQ_DTYPE_F16, Layout::PagedNHD, it.H, it.T, it.D, 16));
    }
    for (Item &it : items) {
        Values K = random_values(it.H, it.T, it.D, Dist::KeysWithOutliers, 0.5);
        Values V = random_values(it.H, it.T, it.D, Dist::Laplace);
        // Subnormal entries (in fp32 and fp16 terms) scattered through keys and values,
        // and one vector made only of tiny numbers.
        for (int i = 0; i < 60; ++i) {
            K.at(below(it.H), below(it.T), below(it.D)) = std::ldexp(uniform(-1, 1), -130);
            V.at(below(it.H), below(it.T), below(it.D)) = std::ldexp(uniform(-1, 1), -16);
        }
        for (uint32_t d = 0; d < it.D; ++d) K.at(0, it.T / 2, d) = std::ldexp(gauss(), -60);
        store(*it.k, K);
        store(*it.v, V);
    }
    return items;
}

// Everything a run produces, as bytes.
struct Result {
    std::vector<uint64_t> digests;
    std::vector<std::vector<uint8_t>> bytes;
    std::vector<uint64_t> sizes;
    bool operator==(const Result &o) const { return digests == o.digests && bytes == o.bytes && sizes == o.sizes; }
};

std::vector<uint8_t> raw_bytes(const Tensor &t, size_t n) {
    const uint8_t *p = static_cast<const uint8_t *>(const_cast<Tensor &>(t).base());
    return std::vector<uint8_t>(p, p + n);
}

// Runs every entry point that computes: context creation, bounds, estimates, compress,
// decode, serialise, deserialise, a sequence. No float arithmetic of the test's own
// happens in here.
Result workload(std::vector<Item> &items) {
    Result r;
    for (Item &it : items) {
        nq_context *ctx = nullptr;
        if (nq_context_create(&it.cfg, &ctx) != NQ_OK) {
            r.sizes.push_back(~0ull);
            continue;
        }
        Ctx holder(ctx);
        nq_kv_desc kv = kv_desc(*it.k, *it.v, it.T);
        kv.start_position = it.start;
        size_t bound = 0;
        nq_compress_bound(ctx, &kv, &bound);
        uint64_t est = 0;
        nq_estimate_bytes(ctx, 3, it.T, &est);
        r.sizes.push_back(bound);
        r.sizes.push_back(est);
        nq_block *b = nullptr;
        nq_status st = nq_compress_kv(ctx, &kv, it.use_scores ? &it.scores : nullptr, nullptr, &b);
        r.sizes.push_back((uint64_t)st);
        if (st != NQ_OK) continue;
        Block blk(b);
        uint64_t dg = 0;
        nq_block_digest(b, &dg);
        r.digests.push_back(dg);
        nq_block_info info;
        info.size = sizeof info;
        nq_block_get_info(b, &info);
        Tensor ok(NQ_DTYPE_F32, Layout::HTD, it.H, info.tokens_kept, it.D),
            ov(NQ_DTYPE_F32, Layout::HTD, it.H, info.tokens_kept, it.D);
        nq_kv_desc out = kv_desc(ok, ov, info.tokens_kept);
        r.sizes.push_back((uint64_t)nq_decode(ctx, b, 0, info.tokens_kept, &out, nullptr));
        r.bytes.push_back(raw_bytes(ok, (size_t)it.H * info.tokens_kept * it.D * 4));
        r.bytes.push_back(raw_bytes(ov, (size_t)it.H * info.tokens_kept * it.D * 4));
        std::vector<uint8_t> arch(1 << 20);
        size_t w = 0;
        nq_block_serialize(ctx, b, arch.data(), arch.size(), &w);
        arch.resize(w);
        r.bytes.push_back(arch);
        nq_block *back = nullptr;
        if (nq_block_deserialize(ctx, arch.data(), w, &back) == NQ_OK) {
            nq_block_digest(back, &dg);
            r.digests.push_back(dg);
            nq_block_free(back);
        }
        nq_sequence *s = nullptr;
        nq_sequence_create(ctx, 0, &s);
        Seq seq(s);
        nq_kv_desc half = kv;
        half.num_tokens = it.T / 2;
        nq_sequence_append(s, &half, it.use_scores ? &it.scores : nullptr, nullptr);
        for (size_t i = 0; i < nq_sequence_num_blocks(s); ++i) {
            nq_block_digest(nq_sequence_block(s, i), &dg);
            r.digests.push_back(dg);
        }
    }
    return r;
}

}  // namespace

TEST(Determinism, SameInputSameBytes) {
    std::vector<Item> items = make_items();
    Result a = workload(items), b = workload(items);
    ASSERT_EQ(a.digests.size(), 9u);
    EXPECT_TRUE(a == b);
    for (uint64_t s : a.sizes) EXPECT_NE(s, ~0ull);
}

// One context, several threads compressing and decoding the same input at once.
TEST(Determinism, ConcurrentCallsOnOneContext) {
    std::vector<Item> items = make_items();
    Item &it = items[1];
    Ctx ctx = make_ctx(it.cfg);
    nq_kv_desc kv = kv_desc(*it.k, *it.v, it.T);
    kv.start_position = it.start;
    Block ref = compress(ctx.get(), kv, &it.scores);
    ASSERT_TRUE(ref);
    const uint64_t want = digest_of(ref.get());
    Decoded want_dec = decode_all(ctx.get(), ref.get());
    std::vector<int> ok(6, 0);
    std::vector<std::thread> th;
    for (int t = 0; t < 6; ++t)
        th.emplace_back([&, t] {
            int good = 0;
            for (int rep = 0; rep < 20; ++rep) {
                nq_block *b = nullptr;
                if (nq_compress_kv(ctx.get(), &kv, &it.scores, nullptr, &b) != NQ_OK) return;
                uint64_t d = 0;
                nq_block_digest(b, &d);
                good += d == want;
                nq_block_free(b);
            }
            ok[t] = good;
        });
    for (auto &t : th) t.join();
    for (int t = 0; t < 6; ++t) EXPECT_EQ(ok[t], 20) << "thread " << t;
    Decoded again = decode_all(ctx.get(), ref.get());
    EXPECT_EQ(again.k.x, want_dec.k.x);
}

#if defined(NQ_TEST_MXCSR)
// The caller's MXCSR (flush-to-zero, denormals-are-zero, rounding direction) changes
// neither the bytes nor survives the call changed.
TEST(Determinism, IndependentOfTheCallersFloatingPointMode) {
    std::vector<Item> items = make_items();
    const unsigned base = _mm_getcsr();
    const Result want = workload(items);
    struct Mode {
        const char *name;
        unsigned bits;  // FTZ 0x8000, DAZ 0x40, rounding 0x6000 (0 nearest, 0x2000 down, 0x4000 up, 0x6000 zero)
    };
    const Mode modes[] = {{"FTZ|DAZ", 0x8040},  {"toward zero", 0x6000}, {"downward", 0x2000},
                          {"upward", 0x4000},   {"FTZ|DAZ|toward zero", 0xE040}};
    for (const Mode &m : modes) {
        const unsigned mode = (base & ~0xE040u) | m.bits;
        _mm_setcsr(mode);
        const Result got = workload(items);
        const unsigned after = _mm_getcsr();
        _mm_setcsr(base);
        EXPECT_EQ(after & ~0x3Fu, mode & ~0x3Fu) << m.name << ": the library changed the caller's MXCSR";  // flags aside
        EXPECT_EQ(got.sizes, want.sizes) << m.name;
        EXPECT_EQ(got.digests, want.digests) << m.name << ": resident bytes depend on the caller's mode";
        ASSERT_EQ(got.bytes.size(), want.bytes.size()) << m.name;
        for (size_t i = 0; i < want.bytes.size(); ++i)
            EXPECT_TRUE(got.bytes[i] == want.bytes[i]) << m.name << ": output " << i << " differs";
    }
    EXPECT_EQ(_mm_getcsr() & ~0x3Fu, base & ~0x3Fu);
}

// Planning runs in the caller's thread too: the bits and eviction a target ratio
// resolves to, and the kept count of a block, may not depend on the rounding mode.
TEST(Determinism, PlanningIndependentOfTheRoundingMode) {
    const unsigned base = _mm_getcsr();
    int checked = 0;
    for (int rep = 0; rep < 300; ++rep) {
        nq_config c;
        nq_config_init(&c);
        c.head_dim = 8 * (1 + below(64));
        c.target_ratio = (float)uniform(2, 60);
        if (rep % 2) {
            c.preset = NQ_PRESET_CUSTOM;
            c.target_ratio = 0;
            c.evict_fraction = (float)uniform(0, 0.99);
        }
        const uint64_t tokens = 1 + u64() % (rep % 3 ? 100000 : 4000000000ull);
        nq_layer_params want;
        uint64_t want_bytes = 0;
        for (unsigned rc : {0x0000u, 0x2000u, 0x4000u, 0x6000u}) {
            _mm_setcsr((base & ~0x6000u) | rc);
            nq_context *ctx = nullptr;
            nq_status st = nq_context_create(&c, &ctx);
            _mm_setcsr(base);
            ASSERT_EQ(st, NQ_OK) << nq_last_error();
            Ctx holder(ctx);
            nq_layer_params p;
            p.size = sizeof p;
            ASSERT_EQ(nq_context_layer_params(ctx, 0, &p), NQ_OK);
            uint64_t bytes = 0;
            _mm_setcsr((base & ~0x6000u) | rc);
            st = nq_estimate_bytes(ctx, 1, tokens, &bytes);
            _mm_setcsr(base);
            if (rc == 0) {
                want = p;
                want_bytes = bytes;
                continue;
            }
            ASSERT_EQ(p.evict_fraction, want.evict_fraction)
                << "target " << c.target_ratio << " head_dim " << c.head_dim << " rounding " << rc;
            ASSERT_EQ(p.k_bits, want.k_bits);
            ASSERT_EQ(p.v_bits, want.v_bits);
            ASSERT_EQ(bytes, want_bytes) << "fraction " << p.evict_fraction << " tokens " << tokens << " rounding " << rc;
            ++checked;
        }
    }
    EXPECT_EQ(checked, 900);
}
#endif
