// A sequence built from a prefill and appended chunks: chunks appended with scores
// (KEY_NORM here) are evicted at the layer's fraction and the sequence reaches the
// ratio of the same tokens compressed as one block; chunks appended with NULL scores
// are quantised only (their 0.1 meaning). Neither keeps a recent or fp16 window. The
// three ratios are printed; the numbers are in docs/DESIGN.md, "Sequences".
#include <cstdio>
#include <vector>

#include "api_harness.h"

using namespace nqt;

namespace {

constexpr uint32_t H = 4, D = 64, kPrefill = 512, kChunk = 512, kChunks = 3, kTotal = kPrefill + kChunks * kChunk;

double ratio_of(const std::vector<const nq_block *> &blocks) {
    double orig = 0, res = 0;
    for (const nq_block *b : blocks) {
        nq_block_info i = info_of(b);
        orig += (double)i.original_bytes;
        res += (double)i.resident_bytes;
    }
    return orig / res;
}

}  // namespace

TEST(SequenceChunks, AppendedChunksAreEvictedWhenScored) {
    Tensor k(NQ_DTYPE_F16, Layout::HTD, H, kTotal, D), v(NQ_DTYPE_F16, Layout::HTD, H, kTotal, D);
    Values K = random_values(H, kTotal, D, Dist::KeysWithOutliers), V = random_values(H, kTotal, D);
    store(k, K);
    store(v, V);
    nq_config c;
    nq_config_init(&c);
    c.num_kv_heads = H;
    c.head_dim = D;
    c.preset = NQ_PRESET_BALANCED;
    c.rope.mode = NQ_ROPE_NONE;
    Ctx ctx = make_ctx(c);
    nq_layer_params lp;
    lp.size = sizeof lp;
    ASSERT_EQ(nq_context_layer_params(ctx.get(), 0, &lp), NQ_OK);

    const nq_kv_desc all = kv_desc(k, v, kTotal);
    Block one = compress(ctx.get(), all);
    ASSERT_TRUE(one);

    // A chunk of the same tensors: tokens [first, first + n).
    auto chunk = [&](uint32_t first, uint32_t n) {
        nq_kv_desc kv = all;
        kv.num_tokens = n;
        kv.start_position = first;
        kv.k = static_cast<uint16_t *>(all.k) + (size_t)first * D;
        kv.v = static_cast<uint16_t *>(all.v) + (size_t)first * D;
        return kv;
    };
    nq_score_desc key_norm;
    nq_score_desc_init(&key_norm);  // kind KEY_NORM: evict by the key-norm proxy
    auto build = [&](const nq_score_desc *sc) {
        nq_sequence *s = nullptr;
        EXPECT_EQ(nq_sequence_create(ctx.get(), 0, &s), NQ_OK);
        Seq seq(s);
        nq_kv_desc kv = chunk(0, kPrefill);
        EXPECT_EQ(nq_sequence_append(s, &kv, sc, nullptr), NQ_OK) << nq_last_error();
        for (uint32_t i = 0; i < kChunks; ++i) {
            kv = chunk(kPrefill + i * kChunk, kChunk);
            EXPECT_EQ(nq_sequence_append(s, &kv, sc, nullptr), NQ_OK) << nq_last_error();
        }
        return seq;
    };
    auto blocks_of = [](const nq_sequence *s) {
        std::vector<const nq_block *> b;
        for (size_t i = 0; i < nq_sequence_num_blocks(s); ++i) b.push_back(nq_sequence_block(s, i));
        return b;
    };
    Seq scored = build(&key_norm), unscored = build(nullptr);
    const std::vector<const nq_block *> chunks = blocks_of(scored.get()), old_blocks = blocks_of(unscored.get());
    ASSERT_EQ(chunks.size(), 1u + kChunks);
    ASSERT_EQ(old_blocks.size(), 1u + kChunks);
    EXPECT_EQ(digest_of(chunks[0]), digest_of(old_blocks[0])) << "the prefill is evicted either way";
    for (size_t i = 1; i < chunks.size(); ++i) {
        nq_block_info in = info_of(chunks[i]), q = info_of(old_blocks[i]);
        const uint32_t evicted = (uint32_t)(lp.evict_fraction * kChunk);  // floor, as the budget takes it
        EXPECT_EQ(in.tokens_kept, kChunk - evicted) << "chunk " << i;
        EXPECT_EQ(q.tokens_kept, kChunk) << "chunk " << i << " without scores: quantised only";
        EXPECT_EQ(in.fp16_window, 0u);
        EXPECT_EQ(q.fp16_window, 0u);
    }
    nq_sequence *s = scored.get();

    const double r_one = ratio_of({one.get()}), r_seq = ratio_of(chunks), r_old = ratio_of(old_blocks);
    std::printf("[ ratio    ] balanced, %u tokens, head_dim %u: one block %.2fx, prefill + %u appended chunks %.2fx "
                "with scores, %.2fx without\n",
                kTotal, D, r_one, kChunks, r_seq, r_old);
    EXPECT_GT(r_seq, 0.97 * r_one);
    EXPECT_GT(r_seq, 1.1 * r_old);

    // The sequence still decodes every kept token, in position order per head.
    uint64_t tokens = 0;
    ASSERT_EQ(nq_sequence_totals(s, &tokens, nullptr, nullptr), NQ_OK);
    for (uint32_t h = 0; h < H; ++h) {
        std::vector<int64_t> pos(tokens);
        ASSERT_EQ(nq_sequence_positions(s, h, 0, (uint32_t)tokens, pos.data()), NQ_OK) << nq_last_error();
        for (size_t i = 1; i < pos.size(); ++i) ASSERT_LT(pos[i - 1], pos[i]);
        EXPECT_LT(pos.back(), (int64_t)kTotal);
    }
    const uint32_t n = (uint32_t)tokens, last_kept = info_of(chunks.back()).tokens_kept;
    Tensor dk(NQ_DTYPE_F32, Layout::HTD, H, n, D), dv(NQ_DTYPE_F32, Layout::HTD, H, n, D);
    nq_kv_desc out = kv_desc(dk, dv, n);
    ASSERT_EQ(nq_sequence_decode(s, 0, n, &out, nullptr), NQ_OK) << nq_last_error();
    Decoded last = decode_f32(ctx.get(), chunks.back(), H, D, 0, last_kept);
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t j = 0; j < last_kept; ++j)
            for (uint32_t d = 0; d < D; ++d) ASSERT_EQ(dk.get(h, n - last_kept + j, d), last.k.at(h, j, d));
}
