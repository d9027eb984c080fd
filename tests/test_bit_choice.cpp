// Bits chosen per block from the data (src/plan/bit_choice.h), through the public API:
// the choice follows the attention the given queries pay, stays within the candidate
// range and the bound, is deterministic, and fixed bits stay fixed.
#include <gtest/gtest.h>

#include "api_harness.h"

namespace {
using namespace nqt;

struct Case {
    uint32_t H = 2, Hq = 4, T = 2000, D = 128, W = 16;
    Tensor k{NQ_DTYPE_F32, Layout::HTD, 2, 2000, 128}, v{NQ_DTYPE_F32, Layout::HTD, 2, 2000, 128};
    Tensor q{NQ_DTYPE_F32, Layout::HTD, 4, 16, 128};
    nq_score_desc sd;

    // query_scale 0: every query attends uniformly (errors average out); larger: each
    // query's attention peaks on a few keys it is aligned with (errors matter). Values
    // share a common component, as a model's do (the output is not near zero).
    explicit Case(double query_scale) {
        Values K = random_values(H, T, D), V = random_values(H, T, D);
        for (double &x : V.x) x += 1.0;
        store(k, K);
        store(v, V);
        Values Q = random_values(Hq, W, D);
        for (uint32_t h = 0; h < Hq; ++h)
            for (uint32_t i = 0; i < W; ++i)
                for (uint32_t d = 0; d < D; ++d)  // aligned with a key of its KV head
                    Q.at(h, i, d) = query_scale * K.at(h / (Hq / H), 37 + 19 * i, d);
        store(q, Q);
        nq_score_desc_init(&sd);
        sd.kind = NQ_SCORES_QUERIES;
        sd.queries = q.base();
        sd.query_dtype = q.dtype();
        sd.num_queries = W;
        sd.q_stride_head = q.layout().stride_head;
        sd.q_stride_token = q.layout().stride_token;
        sd.q_stride_dim = q.layout().stride_dim;
    }
    nq_kv_desc kv() { return kv_desc(k, v, T); }
};

// No fp16 tokens: at 2000 tokens of head_dim 128, K4/V2 then keeps lossless's 5x floor.
nq_config config(nq_preset p) {
    nq_config c;
    nq_config_init(&c);
    c.num_kv_heads = 2;
    c.num_q_heads = 4;
    c.head_dim = 128;
    c.rope.mode = NQ_ROPE_NONE;
    c.fp16_sinks = 0;
    c.fp16_window = 0;
    c.preset = p;
    return c;
}

TEST(BitChoice, FollowsTheAttentionOfTheQueries) {
    Ctx ctx = make_ctx(config(NQ_PRESET_LOSSLESS));
    Case diffuse(0.0), sharp(0.45);
    nq_kv_desc kd = diffuse.kv(), ks = sharp.kv();
    Block bd = compress(ctx.get(), kd, &diffuse.sd), bs = compress(ctx.get(), ks, &sharp.sd);
    ASSERT_TRUE(bd);
    ASSERT_TRUE(bs);
    const nq_block_info d = info_of(bd.get()), s = info_of(bs.get());
    // uniform attention over 2000 tokens averages quantisation error out: the nominal
    // pair; peaked attention cannot reach the target: one bit more (the floor allows it)
    EXPECT_EQ(d.k_bits * 10 + d.v_bits, 32u) << d.k_bits << "/" << d.v_bits;
    EXPECT_EQ(s.k_bits + s.v_bits, 6u) << s.k_bits << "/" << s.v_bits;
    EXPECT_GE(s.k_bits, 3u);
    EXPECT_GE(s.v_bits, 2u);
    EXPECT_GE(s.ratio, 5.0);
    size_t bound = 0;
    ASSERT_EQ(nq_compress_bound(ctx.get(), &ks, &bound), NQ_OK);
    EXPECT_EQ(s.resident_bytes, bound);  // the largest candidate is the bound
    EXPECT_LT(d.resident_bytes, bound);
}

TEST(BitChoice, DeterministicAndDecodable) {
    Ctx ctx = make_ctx(config(NQ_PRESET_BALANCED));
    Case c(0.3);
    nq_kv_desc kv = c.kv();
    Block a = compress(ctx.get(), kv, &c.sd), b = compress(ctx.get(), kv, &c.sd);
    ASSERT_TRUE(a);
    ASSERT_TRUE(b);
    EXPECT_EQ(digest_of(a.get()), digest_of(b.get()));
    const nq_block_info i = info_of(a.get());
    Tensor ko(NQ_DTYPE_F32, Layout::HTD, 2, i.tokens_kept, 128), vo(NQ_DTYPE_F32, Layout::HTD, 2, i.tokens_kept, 128);
    nq_kv_desc out = kv_desc(ko, vo, i.tokens_kept);
    EXPECT_EQ(nq_decode(ctx.get(), a.get(), 0, i.tokens_kept, &out, nullptr), NQ_OK) << nq_last_error();
}

TEST(BitChoice, FixedBitsStayFixed) {
    Case c(1.0);
    nq_kv_desc kv = c.kv();
    nq_config cfg = config(NQ_PRESET_LOSSLESS);
    cfg.k_bits = 3;  // explicit: no choice
    Ctx ctx = make_ctx(cfg);
    Block b = compress(ctx.get(), kv, &c.sd);
    ASSERT_TRUE(b);
    EXPECT_EQ(info_of(b.get()).k_bits, 3u);
    EXPECT_EQ(info_of(b.get()).v_bits, 2u);
    size_t bound = 0;
    ASSERT_EQ(nq_compress_bound(ctx.get(), &kv, &bound), NQ_OK);
    EXPECT_EQ(info_of(b.get()).resident_bytes, bound);
    // a layer override that sets bits fixes that layer only
    const nq_layer_override ov = {1, 2, 4, 4, 0.0f, 0};
    nq_config c2 = config(NQ_PRESET_LOSSLESS);
    c2.overrides = &ov;
    c2.num_overrides = 1;
    Ctx ctx2 = make_ctx(c2);
    kv.layer = 1;
    Block b1 = compress(ctx2.get(), kv, &c.sd);
    ASSERT_TRUE(b1);
    EXPECT_EQ(info_of(b1.get()).k_bits, 4u);
    EXPECT_EQ(info_of(b1.get()).v_bits, 4u);
}

TEST(BitChoice, WithoutQueriesTheNominalBits) {
    Case c(1.0);
    nq_kv_desc kv = c.kv();
    Ctx ctx = make_ctx(config(NQ_PRESET_LOSSLESS));
    Block b = compress(ctx.get(), kv);
    ASSERT_TRUE(b);
    EXPECT_EQ(info_of(b.get()).k_bits, 3u);
    EXPECT_EQ(info_of(b.get()).v_bits, 2u);
}

TEST(BitChoice, TargetRatioKeepsItsPlannedBits) {
    Case sharp(0.6);
    nq_kv_desc kv = sharp.kv();
    nq_config cfg = config(NQ_PRESET_CUSTOM);
    cfg.target_ratio = 5.0f;
    Ctx ctx = make_ctx(cfg);
    nq_layer_params lp = {sizeof lp};
    ASSERT_EQ(nq_context_layer_params(ctx.get(), 0, &lp), NQ_OK);
    Block b = compress(ctx.get(), kv, &sharp.sd);
    ASSERT_TRUE(b);
    const nq_block_info i = info_of(b.get());
    EXPECT_EQ(i.k_bits, lp.k_bits);
    EXPECT_EQ(i.v_bits, lp.v_bits);
    size_t bound = 0;
    ASSERT_EQ(nq_compress_bound(ctx.get(), &kv, &bound), NQ_OK);
    EXPECT_EQ(i.resident_bytes, bound);  // fixed bits: the bound is exact
}

}  // namespace

namespace {
using namespace nqt;

TEST(BitChoice, QueriesThatSeeNothingKeepTheNominalBits) {
    Case c(0.6);
    nq_kv_desc kv = c.kv();
    Ctx ctx = make_ctx(config(NQ_PRESET_LOSSLESS));
    std::vector<int64_t> before(c.W, -1);  // every query precedes every key
    c.sd.query_positions = before.data();
    Block b = compress(ctx.get(), kv, &c.sd);
    ASSERT_TRUE(b);
    EXPECT_EQ(info_of(b.get()).k_bits, 3u);
    EXPECT_EQ(info_of(b.get()).v_bits, 2u);
    // queries that do not fit their description: rejected (validated before use)
    c.sd.query_positions = nullptr;
    c.sd.num_queries = kv.num_tokens + 1;
    nq_block *raw = nullptr;
    EXPECT_EQ(nq_compress_kv(ctx.get(), &kv, &c.sd, nullptr, &raw), NQ_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(raw, nullptr);
}

}  // namespace
