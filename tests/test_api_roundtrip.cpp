// Compress -> decode through the C API: every dtype and layout, token ranges, given
// positions, batches (with and without caller buffers), sequences of appended chunks,
// GQA query scores, and RoPE removal checked against keys rotated here in float64.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "api_harness.h"
#include "rope_ref.h"

using namespace nqt;

namespace {

auto index_from(int64_t start) {
    return [start](int64_t p) { return (uint32_t)(p - start); };
}

std::vector<std::vector<int64_t>> all_positions(const nq_block *b) {
    nq_block_info i = info_of(b);
    std::vector<std::vector<int64_t>> p;
    for (uint32_t h = 0; h < i.num_heads; ++h) p.push_back(positions_of(b, h));
    return p;
}

}  // namespace

// The same values in every layout give the same block; raw tokens come back exactly,
// coded ones within the codec's error; decoding into the input's own layout and dtype
// writes exactly the rounded decode and nothing else.
TEST(RoundTrip, EveryDtypeAndLayout) {
    const uint32_t H = 3, T = 70, D = 64;
    nq_config c;
    nq_config_init(&c);  // lossless preset: K3/V2, 4 fp16 sinks, 32 fp16 window tokens
    c.num_kv_heads = H;
    c.head_dim = D;
    c.rope.mode = NQ_ROPE_NONE;
    Ctx ctx = make_ctx(c);
    ASSERT_TRUE(ctx);
    for (nq_dtype dt : {NQ_DTYPE_F16, NQ_DTYPE_BF16, NQ_DTYPE_F32}) {
        Values K = random_values(H, T, D, Dist::KeysWithOutliers), V = random_values(H, T, D);
        uint64_t first_digest = 0;
        for (Layout lay : kAllLayouts) {
            SCOPED_TRACE(std::string(dtype_label(dt)) + " " + layout_name(lay));
            Tensor kt(dt, lay, H, T, D), vt(dt, lay, H, T, D);
            store(kt, K);
            store(vt, V);
            nq_kv_desc kv = kv_desc(kt, vt, T);
            size_t bound = 0;
            ASSERT_EQ(nq_compress_bound(ctx.get(), &kv, &bound), NQ_OK) << nq_last_error();
            Block b = compress(ctx.get(), kv);
            ASSERT_TRUE(b);
            nq_block_info info = info_of(b.get());
            EXPECT_EQ(info.tokens_in, T);
            EXPECT_EQ(info.tokens_kept, T);
            EXPECT_EQ(info.fp16_sinks, 4u);
            EXPECT_EQ(info.fp16_window, 32u);
            EXPECT_LE(info.resident_bytes, bound);  // the bound plans the largest bit pair
            EXPECT_EQ(info.original_bytes, 2ull * H * T * D * 2);
            EXPECT_DOUBLE_EQ(info.ratio, (double)info.original_bytes / (double)info.resident_bytes);
            EXPECT_EQ(info.header_bytes + info.position_bytes + info.scale_bytes + info.code_bytes + info.fp16_bytes +
                          info.key_mean_bytes + info.padding_bytes,
                      info.resident_bytes);
            EXPECT_EQ(info.key_mean_bytes, (uint64_t)H * D * 2);  // key centering is on by default
            EXPECT_EQ(info.code_bytes, (uint64_t)H * (T - 36) * D * (3 + 2) / 8);
            EXPECT_EQ(info.scale_bytes, (uint64_t)H * (T - 36) * 2 * 2);
            EXPECT_EQ(info.fp16_bytes, (uint64_t)H * 36 * D * 2 * 2);
            const void *data = nullptr;
            size_t bytes = 0;
            ASSERT_EQ(nq_block_data(b.get(), &data, &bytes), NQ_OK);
            EXPECT_EQ(bytes, info.resident_bytes);
            const uint64_t dg = digest_of(b.get());
            if (lay == Layout::HTD)
                first_digest = dg;
            else
                EXPECT_EQ(dg, first_digest) << "resident bytes depend on the input layout";

            Decoded dd = decode_all(ctx.get(), b.get());
            for (uint32_t h = 0; h < H; ++h)
                for (uint32_t j = 0; j < T; ++j) {
                    if (j >= 4 && j < T - 32) continue;
                    for (uint32_t d = 0; d < D; ++d) {
                        ASSERT_EQ(dd.k.at(h, j, d), ref_round_f16(K.at(h, j, d))) << "raw K h " << h << " t " << j;
                        ASSERT_EQ(dd.v.at(h, j, d), ref_round_f16(V.at(h, j, d))) << "raw V h " << h << " t " << j;
                    }
                }
            auto pos = all_positions(b.get());
            EXPECT_GE(snr_rows(K, dd.k, pos, index_from(0), 4, 32), e8_snr_floor(3) - 0.3);
            EXPECT_GE(snr_rows(V, dd.v, pos, index_from(0), 4, 32), e8_snr_floor(2) - 0.3);

            Tensor ko(dt, lay, H, T, D), vo(dt, lay, H, T, D);
            nq_kv_desc out = kv_desc(ko, vo, T);
            ASSERT_EQ(nq_decode(ctx.get(), b.get(), 0, T, &out, nullptr), NQ_OK) << nq_last_error();
            for (uint32_t h = 0; h < H; ++h)
                for (uint32_t j = 0; j < T; ++j)
                    for (uint32_t d = 0; d < D; ++d) {
                        ASSERT_EQ(ko.get(h, j, d), round_to(dt, dd.k.at(h, j, d)));
                        ASSERT_EQ(vo.get(h, j, d), round_to(dt, dd.v.at(h, j, d)));
                    }
            EXPECT_TRUE(ko.only_addressed_written());
            EXPECT_TRUE(vo.only_addressed_written());
        }
    }
}

// One block decoded into every dtype and layout: the f32 decode rounded to the dtype.
TEST(RoundTrip, DecodeIntoAnyLayoutAndDtype) {
    const uint32_t H = 2, T = 41, D = 80;  // head_dim 80: Hadamard blocks of 16
    nq_config c = plain_config(H, D, 4, 3);
    Ctx ctx = make_ctx(c);
    Tensor kt(NQ_DTYPE_BF16, Layout::THD, H, T, D), vt(NQ_DTYPE_BF16, Layout::THD, H, T, D);
    Values K = random_values(H, T, D, Dist::Laplace, 3.0), V = random_values(H, T, D, Dist::Gauss, 0.01);
    store(kt, K);
    store(vt, V);
    Block b = compress(ctx.get(), kv_desc(kt, vt, T));
    ASSERT_TRUE(b);
    Decoded ref = decode_all(ctx.get(), b.get());
    auto pos = all_positions(b.get());
    EXPECT_GE(snr_rows(V, ref.v, pos, index_from(0)), e8_snr_floor(3) - 0.5);
    for (nq_dtype dt : {NQ_DTYPE_F16, NQ_DTYPE_BF16, NQ_DTYPE_F32})
        for (Layout lay : kAllLayouts) {
            SCOPED_TRACE(std::string(dtype_label(dt)) + " " + layout_name(lay));
            Tensor ko(dt, lay, H, T, D, 8), vo(dt, lay, H, T, D, 8);
            nq_kv_desc out = kv_desc(ko, vo, T);
            ASSERT_EQ(nq_decode(ctx.get(), b.get(), 0, T, &out, nullptr), NQ_OK) << nq_last_error();
            for (uint32_t h = 0; h < H; ++h)
                for (uint32_t j = 0; j < T; ++j)
                    for (uint32_t d = 0; d < D; ++d) {
                        ASSERT_EQ(ko.get(h, j, d), round_to(dt, ref.k.at(h, j, d)));
                        ASSERT_EQ(vo.get(h, j, d), round_to(dt, ref.v.at(h, j, d)));
                    }
            EXPECT_TRUE(ko.only_addressed_written());
            EXPECT_TRUE(vo.only_addressed_written());
        }
}

// Any token range decodes to exactly the same rows as the whole block.
TEST(RoundTrip, TokenRanges) {
    const uint32_t H = 2, T = 90, D = 32;
    nq_config c;
    nq_config_init(&c);
    c.num_kv_heads = H;
    c.head_dim = D;
    c.fp16_window = 16;
    Ctx ctx = make_ctx(c);
    Tensor kt(NQ_DTYPE_F16, Layout::HTD, H, T, D), vt(NQ_DTYPE_F16, Layout::HTD, H, T, D);
    Values K = random_values(H, T, D), V = random_values(H, T, D);
    store(kt, K);
    store(vt, V);
    nq_kv_desc kv = kv_desc(kt, vt, T);
    kv.start_position = 1000;
    Block b = compress(ctx.get(), kv);
    ASSERT_TRUE(b);
    Decoded all = decode_all(ctx.get(), b.get());
    std::vector<std::pair<uint32_t, uint32_t>> ranges = {{0, T}, {0, 0},  {T, T},   {0, 1},  {T - 1, T},
                                                         {3, 5}, {4, 74}, {73, 75}, {50, 90}};
    for (int i = 0; i < 20; ++i) {
        uint32_t a = below(T + 1), e = below(T + 1);
        ranges.push_back({std::min(a, e), std::max(a, e)});
    }
    for (auto r : ranges) {
        const uint32_t n = r.second - r.first;
        Tensor ko(NQ_DTYPE_F32, Layout::THD, H, std::max(n, 1u), D),
            vo(NQ_DTYPE_F32, Layout::THD, H, std::max(n, 1u), D);
        nq_kv_desc out = kv_desc(ko, vo, n);
        ASSERT_EQ(nq_decode(ctx.get(), b.get(), r.first, r.second, &out, nullptr), NQ_OK)
            << r.first << ".." << r.second << ": " << nq_last_error();
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t j = 0; j < n; ++j)
                for (uint32_t d = 0; d < D; ++d) {
                    ASSERT_EQ(ko.get(h, j, d), all.k.at(h, r.first + j, d)) << r.first << ".." << r.second;
                    ASSERT_EQ(vo.get(h, j, d), all.v.at(h, r.first + j, d)) << r.first << ".." << r.second;
                }
        if (n == 0) {
            EXPECT_TRUE(ko.only_addressed_written());  // nothing written
        }
        int64_t p[2] = {-1, -1};
        if (n) {
            ASSERT_EQ(nq_block_positions(b.get(), 1, r.first, r.first + 1, p), NQ_OK);
            EXPECT_EQ(p[0], 1000 + (int64_t)r.first);
        }
    }
    nq_block_info info = info_of(b.get());
    EXPECT_EQ(info.first_position, 1000);
    EXPECT_EQ(info.last_position, 1000 + T - 1);
    EXPECT_EQ(info.position_bytes, 0u);  // contiguous positions are not stored
}

// Given positions with gaps are stored and reported; the block decodes the same as with
// contiguous positions when RoPE plays no part.
TEST(RoundTrip, GivenPositions) {
    const uint32_t H = 2, T = 50, D = 64;
    nq_config c = plain_config(H, D);
    Ctx ctx = make_ctx(c);
    Tensor kt(NQ_DTYPE_F16, Layout::HTD, H, T, D), vt(NQ_DTYPE_F16, Layout::HTD, H, T, D);
    Values K = random_values(H, T, D), V = random_values(H, T, D);
    store(kt, K);
    store(vt, V);
    for (int64_t span : {(int64_t)200, (int64_t)70000, (int64_t)4000000000}) {  // u16 and u32 offsets
        std::vector<int64_t> pos(T);
        int64_t p = (int64_t)below(1000);
        for (uint32_t i = 0; i < T; ++i) {
            pos[i] = p;
            p += 1 + (int64_t)(u64() % (uint64_t)(span / T));
        }
        nq_kv_desc kv = kv_desc(kt, vt, T);
        kv.positions = pos.data();
        Block b = compress(ctx.get(), kv);
        ASSERT_TRUE(b);
        nq_block_info info = info_of(b.get());
        EXPECT_EQ(info.first_position, pos[0]);
        EXPECT_EQ(info.last_position, pos[T - 1]);
        EXPECT_EQ(info.positions_per_head, 0u);
        const uint64_t width = (pos[T - 1] - pos[0] < 65536) ? 2 : 4;
        EXPECT_EQ(info.position_bytes, width * T) << "span " << span;
        for (uint32_t h = 0; h < H; ++h) EXPECT_EQ(positions_of(b.get(), h), pos);
        nq_kv_desc kv0 = kv_desc(kt, vt, T);
        Block b0 = compress(ctx.get(), kv0);
        Decoded d1 = decode_all(ctx.get(), b.get()), d0 = decode_all(ctx.get(), b0.get());
        EXPECT_EQ(d1.k.x, d0.k.x);
        EXPECT_EQ(d1.v.x, d0.v.x);
    }
}

// nq_compress_batch over ragged items equals item-by-item compression, with blocks in
// allocator memory or in caller buffers with a caller workspace (then the library
// allocates nothing but the handles).
TEST(RoundTrip, BatchOfRaggedItems) {
    const uint32_t H = 2, D = 32;
    CountingAllocator counter;
    nq_config c;
    nq_config_init(&c);
    c.num_kv_heads = H;
    c.head_dim = D;
    c.preset = NQ_PRESET_HIGH;  // evicts: selection runs in the batch too
    c.allocator = counter.get();
    Ctx ctx = make_ctx(c);
    ASSERT_TRUE(ctx);
    const std::vector<uint32_t> lengths = {1, 17, 64, 100, 33, 5, 130};
    const size_t n = lengths.size();
    std::vector<std::unique_ptr<Tensor>> ks, vs;
    std::vector<nq_kv_desc> items;
    std::vector<std::vector<float>> given(n);
    std::vector<nq_score_desc> scores(n);
    for (size_t i = 0; i < n; ++i) {
        const uint32_t T = lengths[i];
        const Layout lay = kAllLayouts[i % 6];
        ks.emplace_back(new Tensor(NQ_DTYPE_F16, lay, H, T, D));
        vs.emplace_back(new Tensor(NQ_DTYPE_F16, lay, H, T, D));
        Values K = random_values(H, T, D), V = random_values(H, T, D);
        store(*ks[i], K);
        store(*vs[i], V);
        nq_kv_desc kv = kv_desc(*ks[i], *vs[i], T);
        kv.layer = (uint32_t)i;
        kv.start_position = (int64_t)below(10);
        items.push_back(kv);
        nq_score_desc_init(&scores[i]);
        if (i % 2) {  // odd items: engine scores; even: the key-norm proxy
            given[i].resize((size_t)H * T);
            for (float &s : given[i]) s = (float)uniform(0, 1);
            scores[i].kind = NQ_SCORES_GIVEN;
            scores[i].scores = given[i].data();
            scores[i].score_stride_head = T;
            scores[i].score_stride_token = 1;
        }
    }
    std::vector<uint64_t> want(n);
    for (size_t i = 0; i < n; ++i) {
        Block b = compress(ctx.get(), items[i], &scores[i]);
        ASSERT_TRUE(b);
        want[i] = digest_of(b.get());
        EXPECT_EQ(info_of(b.get()).layer, i);
    }

    std::vector<nq_block *> out(n, nullptr);
    std::vector<nq_status> st(n, NQ_ERR_INTERNAL);
    ASSERT_EQ(nq_compress_batch(ctx.get(), items.data(), scores.data(), n, nullptr, nullptr, 0, nullptr, out.data(),
                                st.data()),
              NQ_OK)
        << nq_last_error();
    for (size_t i = 0; i < n; ++i) {
        EXPECT_EQ(st[i], NQ_OK);
        EXPECT_EQ(digest_of(out[i]), want[i]) << "item " << i;
        nq_block_free(out[i]);
        out[i] = nullptr;
    }

    std::vector<nq_buffer> dst(n);
    for (size_t i = 0; i < n; ++i) {
        size_t bound = 0;
        ASSERT_EQ(nq_compress_bound(ctx.get(), &items[i], &bound), NQ_OK);
        dst[i].capacity = bound + below(3) * 16;
        dst[i].data = std::aligned_alloc(64, (dst[i].capacity + 63) / 64 * 64);
    }
    size_t ws_bytes = 0;
    ASSERT_EQ(nq_workspace_size(ctx.get(), items.data(), n, &ws_bytes), NQ_OK);
    void *ws = std::aligned_alloc(64, (ws_bytes + 63) / 64 * 64);
    const long before = counter.alloc_count();
    ASSERT_EQ(nq_compress_batch(ctx.get(), items.data(), scores.data(), n, dst.data(), ws, ws_bytes, nullptr,
                                out.data(), st.data()),
              NQ_OK)
        << nq_last_error();
    EXPECT_EQ(counter.alloc_count() - before, (long)n) << "only the block handles may be allocated";
    for (size_t i = 0; i < n; ++i) {
        EXPECT_EQ(digest_of(out[i]), want[i]) << "item " << i;
        const void *data = nullptr;
        size_t bytes = 0;
        ASSERT_EQ(nq_block_data(out[i], &data, &bytes), NQ_OK);
        EXPECT_EQ(data, dst[i].data);
        Decoded d = decode_all(ctx.get(), out[i]);  // decodes from the caller's buffer
        EXPECT_EQ(d.k.T, info_of(out[i]).tokens_kept);
        nq_block_free(out[i]);
    }
    for (auto &b : dst) std::free(b.data);
    std::free(ws);
    EXPECT_EQ(counter.bad_frees, 0);
    EXPECT_EQ(counter.bad_requests, 0);
}

// A block refers to no context (the header's "Ownership and lifetimes"): it outlives
// the context that made it, decodes and serialises with another context of the same
// shape, and frees its bytes through the first context's allocator, which must (and
// here does) outlive it.
TEST(RoundTrip, BlockOutlivesItsContext) {
    const uint32_t H = 2, D = 32, T = 40;
    CountingAllocator counter;
    nq_config c = plain_config(H, D);
    c.allocator = counter.get();
    Ctx first = make_ctx(c);
    ASSERT_TRUE(first);
    Block b = compress_random(first.get(), H, T, D);
    ASSERT_TRUE(b);
    const uint64_t digest = digest_of(b.get());
    const Decoded want = decode_all(first.get(), b.get());
    first.reset();
    EXPECT_EQ(counter.live.size(), 2u) << "the block's handle and bytes";

    Ctx second = make_ctx(plain_config(H, D));
    ASSERT_TRUE(second);
    EXPECT_EQ(digest_of(b.get()), digest);
    const Decoded got = decode_all(second.get(), b.get());
    EXPECT_EQ(got.k.x, want.k.x);
    EXPECT_EQ(got.v.x, want.v.x);
    size_t cap = 0, written = 0;
    ASSERT_EQ(nq_block_serialize_bound(b.get(), &cap), NQ_OK);
    std::vector<uint8_t> archive(cap);
    ASSERT_EQ(nq_block_serialize(second.get(), b.get(), archive.data(), cap, &written), NQ_OK) << nq_last_error();
    nq_block *back = nullptr;
    ASSERT_EQ(nq_block_deserialize(second.get(), archive.data(), written, &back), NQ_OK) << nq_last_error();
    EXPECT_EQ(digest_of(back), digest);
    nq_block_free(back);
    b.reset();
    EXPECT_TRUE(counter.live.empty());
    EXPECT_EQ(counter.bad_frees, 0);
}

// One bad item fails alone: the others are compressed, its handle is NULL, the call
// returns its status and the message names it.
TEST(RoundTrip, BatchWithAFailingItem) {
    const uint32_t H = 1, D = 16;
    Ctx ctx = make_ctx(plain_config(H, D));
    Tensor k(NQ_DTYPE_F16, Layout::HTD, H, 10, D), v(NQ_DTYPE_F16, Layout::HTD, H, 10, D);
    Values K = random_values(H, 10, D), V = random_values(H, 10, D);
    store(k, K);
    store(v, V);
    std::vector<nq_kv_desc> items(4, kv_desc(k, v, 10));
    items[2].v = nullptr;
    std::vector<nq_block *> out(4, nullptr);
    std::vector<nq_status> st(4, NQ_OK);
    EXPECT_EQ(
        nq_compress_batch(ctx.get(), items.data(), nullptr, 4, nullptr, nullptr, 0, nullptr, out.data(), st.data()),
        NQ_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(nq_last_error()).find("item 2"), std::string::npos) << nq_last_error();
    EXPECT_NE(std::string(nq_last_error()).find("kv.v"), std::string::npos) << nq_last_error();
    for (int i = 0; i < 4; ++i) {
        EXPECT_EQ(st[i], i == 2 ? NQ_ERR_INVALID_ARGUMENT : NQ_OK);
        EXPECT_EQ(out[i] == nullptr, i == 2);
        nq_block_free(out[i]);
    }
}

// A sequence grows by chunks; decoding any token range across blocks gives exactly the
// per-block decodes, and positions run on across blocks.
TEST(RoundTrip, SequenceAppendAndRangeDecode) {
    for (nq_preset preset : {NQ_PRESET_LOSSLESS, NQ_PRESET_HIGH}) {
        SCOPED_TRACE(nq_preset_name(preset));
        const uint32_t H = 2, D = 64;
        nq_config c;
        nq_config_init(&c);  // RoPE removal with the default theta
        c.preset = preset;
        c.num_kv_heads = H;
        c.head_dim = D;
        Ctx ctx = make_ctx(c);
        nq_sequence *sp = nullptr;
        ASSERT_EQ(nq_sequence_create(ctx.get(), 3, &sp), NQ_OK);
        Seq seq(sp);
        const std::vector<uint32_t> chunks = {80, 1, 5, 16, 1, 9};
        std::vector<Values> Ks, Vs;
        std::vector<int64_t> starts;
        int64_t next = 0;
        uint64_t kept_total = 0, bytes_total = 0, orig_total = 0;
        double sig = 0, err = 0;
        for (uint32_t T : chunks) {
            Tensor kt(NQ_DTYPE_F16, Layout::THD, H, T, D), vt(NQ_DTYPE_F16, Layout::THD, H, T, D);
            Ks.push_back(random_values(H, T, D));
            Vs.push_back(random_values(H, T, D));
            store(kt, Ks.back());
            store(vt, Vs.back());
            nq_kv_desc kv = kv_desc(kt, vt, T);
            kv.start_position = next;
            starts.push_back(next);
            kv.layer = 7;  // ignored: the sequence's layer is used
            ASSERT_EQ(nq_sequence_append(seq.get(), &kv, nullptr, nullptr), NQ_OK) << nq_last_error();
            next += T;
        }
        ASSERT_EQ(nq_sequence_num_blocks(seq.get()), chunks.size());
        EXPECT_EQ(nq_sequence_block(seq.get(), chunks.size()), nullptr);
        std::vector<Decoded> parts;
        std::vector<std::vector<int64_t>> pos_concat(H);
        for (size_t i = 0; i < chunks.size(); ++i) {
            const nq_block *b = nq_sequence_block(seq.get(), i);
            ASSERT_NE(b, nullptr);
            nq_block_info info = info_of(b);
            EXPECT_EQ(info.layer, 3u);
            EXPECT_EQ(info.tokens_in, chunks[i]);
            // floor(0.42 * 80) evicted from the prefill only
            const uint32_t kept = i == 0 && preset == NQ_PRESET_HIGH ? 80u - 33u : chunks[i];
            EXPECT_EQ(info.tokens_kept, kept);
            EXPECT_EQ(info.fp16_window, i == 0 ? 32u : 0u) << "later chunks carry no fp16 window";
            kept_total += info.tokens_kept;
            bytes_total += info.resident_bytes;
            orig_total += info.original_bytes;
            parts.push_back(decode_all(ctx.get(), b));
            for (uint32_t h = 0; h < H; ++h) {
                auto p = positions_of(b, h);
                pos_concat[h].insert(pos_concat[h].end(), p.begin(), p.end());
            }
            // errors of the coded rows, summed over the chunks
            for (uint32_t h = 0; h < H; ++h) {
                const std::vector<int64_t> p = positions_of(b, h);
                for (uint32_t j = info.fp16_sinks; j + info.fp16_window < info.tokens_kept; ++j)
                    for (uint32_t d = 0; d < D; ++d) {
                        const double a = Ks[i].at(h, (uint32_t)(p[j] - starts[i]), d);
                        const double e = a - parts.back().k.at(h, j, d);
                        sig += a * a;
                        err += e * e;
                    }
            }
        }
        EXPECT_GE(10 * std::log10(sig / err), e8_snr_floor(3) - 0.3);
        uint64_t t = 0, by = 0, o = 0;
        ASSERT_EQ(nq_sequence_totals(seq.get(), &t, &by, &o), NQ_OK);
        EXPECT_EQ(t, kept_total);
        EXPECT_EQ(by, bytes_total);
        EXPECT_EQ(o, orig_total);
        // Rows of the whole sequence, in order.
        std::vector<const Decoded *> owner;
        std::vector<uint32_t> row;
        for (size_t i = 0; i < parts.size(); ++i)
            for (uint32_t j = 0; j < parts[i].k.T; ++j) {
                owner.push_back(&parts[i]);
                row.push_back(j);
            }
        const uint32_t total = (uint32_t)row.size();
        const uint32_t k0 = parts[0].k.T;  // the prefill block's rows
        std::vector<std::pair<uint32_t, uint32_t>> ranges = {
            {0, total}, {k0 - 1, k0 + 1}, {k0, k0 + 1}, {k0 + 1, k0 + 6}, {0, 0}, {total, total}, {total - 1, total},
            {k0 + 5, total}};
        for (int i = 0; i < 25; ++i) {
            uint32_t a = below(total + 1), e = below(total + 1);
            ranges.push_back({std::min(a, e), std::max(a, e)});
        }
        for (auto r : ranges) {
            const uint32_t n = r.second - r.first;
            Tensor ko(NQ_DTYPE_F32, Layout::HTD, H, std::max(n, 1u), D),
                vo(NQ_DTYPE_F32, Layout::HTD, H, std::max(n, 1u), D);
            nq_kv_desc out = kv_desc(ko, vo, n);
            ASSERT_EQ(nq_sequence_decode(seq.get(), r.first, r.second, &out, nullptr), NQ_OK)
                << r.first << ".." << r.second << ": " << nq_last_error();
            for (uint32_t h = 0; h < H; ++h)
                for (uint32_t j = 0; j < n; ++j)
                    for (uint32_t d = 0; d < D; ++d) {
                        const uint32_t g = r.first + j;
                        ASSERT_EQ(ko.get(h, j, d), owner[g]->k.at(h, row[g], d))
                            << r.first << ".." << r.second << " " << j;
                        ASSERT_EQ(vo.get(h, j, d), owner[g]->v.at(h, row[g], d))
                            << r.first << ".." << r.second << " " << j;
                    }
            EXPECT_TRUE(ko.only_addressed_written());
            std::vector<int64_t> p(n + 1, -1);
            ASSERT_EQ(nq_sequence_positions(seq.get(), 1, r.first, r.second, p.data()), NQ_OK);
            for (uint32_t j = 0; j < n; ++j) EXPECT_EQ(p[j], pos_concat[1][r.first + j]);
        }
        EXPECT_EQ(nq_sequence_decode(seq.get(), 0, total + 1, nullptr, nullptr), NQ_ERR_INVALID_ARGUMENT);

        // Positions must continue after the last one.
        Tensor kt(NQ_DTYPE_F16, Layout::HTD, H, 4, D), vt(NQ_DTYPE_F16, Layout::HTD, H, 4, D);
        Values K = random_values(H, 4, D), V = random_values(H, 4, D);
        store(kt, K);
        store(vt, V);
        nq_kv_desc kv = kv_desc(kt, vt, 4);
        kv.start_position = next - 1;
        EXPECT_EQ(nq_sequence_append(seq.get(), &kv, nullptr, nullptr), NQ_ERR_INVALID_ARGUMENT);
        EXPECT_EQ(nq_sequence_num_blocks(seq.get()), chunks.size());
        // An existing block joins the sequence (which then owns it).
        kv.start_position = next + 10;
        nq_block *extra = nullptr;
        ASSERT_EQ(nq_compress_kv(ctx.get(), &kv, nullptr, nullptr, &extra), NQ_OK);
        ASSERT_EQ(nq_sequence_append_block(seq.get(), extra), NQ_OK) << nq_last_error();
        EXPECT_EQ(nq_sequence_num_blocks(seq.get()), chunks.size() + 1);
        std::vector<int64_t> p(4);
        ASSERT_EQ(nq_sequence_positions(seq.get(), 0, total, total + 4, p.data()), NQ_OK);
        EXPECT_EQ(p[0], next + 10);
        EXPECT_EQ(p[3], next + 13);
    }
}

// GQA: num_q_heads = 1x, 3x, 4x the KV heads, eviction by the attention of the last
// queries. Compression keeps the planned count and the kept tokens decode well.
TEST(RoundTrip, GqaQueryScores) {
    const uint32_t H = 2, T = 96, D = 64, W = 8;
    for (uint32_t ratio : {1u, 3u, 4u}) {
        nq_config c = plain_config(H, D, 4, 4);
        c.num_q_heads = H * ratio;
        c.evict_fraction = 0.5f;
        c.sink_tokens = 4;
        c.recent_window = 8;
        Ctx ctx = make_ctx(c);
        for (nq_dtype qdt : {NQ_DTYPE_F16, NQ_DTYPE_F32}) {
            Tensor kt(NQ_DTYPE_F16, Layout::HTD, H, T, D), vt(NQ_DTYPE_F16, Layout::HTD, H, T, D);
            Values K = random_values(H, T, D), V = random_values(H, T, D);
            store(kt, K);
            store(vt, V);
            Tensor q(qdt, Layout::THD, H * ratio, W, D);
            Values Q = random_values(H * ratio, W, D);
            store(q, Q);
            nq_score_desc sc;
            nq_score_desc_init(&sc);
            sc.kind = NQ_SCORES_QUERIES;
            sc.queries = q.base();
            sc.query_dtype = qdt;
            sc.num_queries = W;
            sc.q_stride_head = q.layout().stride_head;
            sc.q_stride_token = q.layout().stride_token;
            sc.q_stride_dim = 1;
            Block b = compress(ctx.get(), kv_desc(kt, vt, T), &sc);
            ASSERT_TRUE(b) << "ratio " << ratio;
            nq_block_info info = info_of(b.get());
            EXPECT_EQ(info.tokens_kept, T - (uint32_t)std::floor(0.5 * T));
            EXPECT_EQ(info.positions_per_head, 1u);
            Decoded d = decode_all(ctx.get(), b.get());
            auto pos = all_positions(b.get());
            EXPECT_GE(snr_rows(K, d.k, pos, index_from(0)), e8_snr_floor(4) - 0.5);
            EXPECT_GE(snr_rows(V, d.v, pos, index_from(0)), e8_snr_floor(4) - 0.5);
        }
    }
}

// Keys rotated here in float64 (every scaling, both pairings, partial rotary dims):
// with NQ_ROPE_REMOVE they decode back to the rotated keys with the SNR that unrotated
// keys get without RoPE, and token by token they equal the unrotated keys' decode
// rotated here, which only holds if the library removed exactly the model's rotation.
// NQ_ROPE_KEEP quantises the rotated keys as they are.
TEST(RoundTrip, RopeRemovalMatchesTheModelsRotation) {
    const uint32_t H = 2, T = 64, D = 128;
    for (const RopeRef &rc : ref_rope_cases()) {
        for (bool interleaved : {false, true}) {
            SCOPED_TRACE(rc.name + (interleaved ? " interleaved" : " split-half"));
            nq_config c = plain_config(H, D, 4, 2);
            c.rope.mode = NQ_ROPE_REMOVE;
            c.rope.pairing = interleaved ? NQ_ROPE_INTERLEAVED : NQ_ROPE_SPLIT_HALF;
            c.rope.rotary_dims = rc.dim;
            c.rope.theta = rc.theta;
            c.rope.scaling = (nq_rope_scaling)rc.scaling;
            c.rope.factor = rc.factor;
            c.rope.original_max_position = rc.orig;
            c.rope.low_freq_factor = rc.low;
            c.rope.high_freq_factor = rc.high;
            c.rope.beta_fast = rc.beta_fast;
            c.rope.beta_slow = rc.beta_slow;
            c.rope.attention_factor = rc.attention;
            Ctx remove = make_ctx(c);
            c.rope.mode = NQ_ROPE_KEEP;
            Ctx keep = make_ctx(c);
            c.rope.mode = NQ_ROPE_NONE;
            Ctx none = make_ctx(c);
            ASSERT_TRUE(remove && keep && none);

            const int64_t start = (rc.orig ? rc.orig : 1000) + (int64_t)below(3000);
            const uint32_t rope_seq_len = below(2) ? 0u : (uint32_t)(start + T + below(5000));
            double m;
            std::vector<double> inv = ref_inv_freq(rc, rope_seq_len ? rope_seq_len : (uint32_t)(start + T), &m);
            Values K0 = random_values(H, T, D, Dist::KeysWithOutliers), V = random_values(H, T, D);
            Tensor k0(NQ_DTYPE_F32, Layout::HTD, H, T, D), kr(NQ_DTYPE_F32, Layout::HTD, H, T, D),
                vt(NQ_DTYPE_F32, Layout::HTD, H, T, D);
            store(k0, K0);
            store(vt, V);
            Values Kr = K0;
            for (uint32_t h = 0; h < H; ++h)
                for (uint32_t t = 0; t < T; ++t) ref_rotate(&Kr.at(h, t, 0), interleaved, rc.dim, inv, m, start + t);
            store(kr, Kr);

            nq_kv_desc kv_rot = kv_desc(kr, vt, T), kv_plain = kv_desc(k0, vt, T);
            kv_rot.start_position = kv_plain.start_position = start;
            kv_rot.rope_seq_len = rope_seq_len;
            Block br = compress(remove.get(), kv_rot), bk = compress(keep.get(), kv_rot),
                  bn = compress(none.get(), kv_plain), bkn = compress(none.get(), kv_rot);
            ASSERT_TRUE(br && bk && bn && bkn);
            Decoded dr = decode_all(remove.get(), br.get()), dn = decode_all(none.get(), bn.get()),
                    dk = decode_all(keep.get(), bk.get()), dkn = decode_all(none.get(), bkn.get());
            auto pos = all_positions(br.get());
            // Token by token: remove's decode == rotate(none's decode).
            Values dn_rot = dn.k;
            int same = 0;
            for (uint32_t h = 0; h < H; ++h)
                for (uint32_t t = 0; t < T; ++t) {
                    double *x = &dn_rot.at(h, t, 0);
                    ref_rotate(x, interleaved, rc.dim, inv, m, start + t);
                    double err = 0, nrm = 0;
                    for (uint32_t d = 0; d < D; ++d) {
                        err = std::max(err, std::fabs(x[d] - dr.k.at(h, t, d)));
                        nrm = std::max(nrm, std::fabs(x[d]));
                    }
                    same += err <= 1e-5 * nrm;
                }
            EXPECT_GE(same, (int)(0.9 * H * T)) << "decoded keys do not follow the model's rotation";
            const double snr_r = snr_rows(Kr, dr.k, pos, index_from(start));
            const double snr_n = snr_rows(K0, dn.k, pos, index_from(start));
            EXPECT_NEAR(snr_r, snr_rows(Kr, dn_rot, pos, index_from(start)), 0.05);
            // The rotation is orthogonal: the same SNR as keys without RoPE (YaRN's factor
            // scales only the rotary dims, which shifts the SNR when they are a part).
            if (rc.dim == D || m == 1.0) {
                EXPECT_NEAR(snr_r, snr_n, 0.05);
            }
            EXPECT_GE(snr_r, e8_snr_floor(4) - 0.5);
            EXPECT_EQ(dr.v.x, dn.v.x);  // values never see RoPE
            // KEEP: the rotated keys quantised as given (as with no RoPE at all).
            EXPECT_EQ(dk.k.x, dkn.k.x);
            EXPECT_EQ(info_of(bk.get()).rope_mode, NQ_ROPE_KEEP);
        }
    }
}

// All-zero vectors stay zero; tiny ones (whose squares underflow the fp32 sum of
// squares of FORMAT.md 1.6, or whose scale is below bf16's normal range) come back as
// zero; large fp32 ones keep their SNR. Magnitudes whose squares overflow the fp32 sum
// are refused with a message, not quantised to garbage.
TEST(RoundTrip, ZeroTinyAndLargeVectors) {
    const uint32_t H = 1, T = 6, D = 32;
    Ctx ctx = make_ctx(plain_config(H, D, 3, 3));
    Tensor kt(NQ_DTYPE_F32, Layout::HTD, H, T, D), vt(NQ_DTYPE_F32, Layout::HTD, H, T, D);
    Values K = random_values(H, T, D), V = random_values(H, T, D);
    for (uint32_t d = 0; d < D; ++d) {
        K.at(0, 0, d) = V.at(0, 0, d) = 0.0;
        K.at(0, 1, d) *= 1e-42;  // subnormal floats
        V.at(0, 1, d) *= 1e-39;
        K.at(0, 2, d) *= 1e15;
        V.at(0, 2, d) *= 1e-15;
        K.at(0, 3, d) *= 1e-25;  // squares underflow fp32: stored as a zero vector
    }
    store(kt, K);
    store(vt, V);
    Block b = compress(ctx.get(), kv_desc(kt, vt, T));
    ASSERT_TRUE(b);
    Decoded d = decode_all(ctx.get(), b.get());
    for (uint32_t i = 0; i < D; ++i) {
        EXPECT_EQ(d.k.at(0, 0, i), 0.0);
        EXPECT_EQ(d.v.at(0, 0, i), 0.0);
        EXPECT_EQ(d.k.at(0, 1, i), 0.0);
        EXPECT_EQ(d.v.at(0, 1, i), 0.0);
        EXPECT_EQ(d.k.at(0, 3, i), 0.0);
    }
    auto row_snr = [&](const Values &a, const Values &b2, uint32_t t) {
        double s = 0, n = 0;
        for (uint32_t i = 0; i < D; ++i) {
            s += a.at(0, t, i) * a.at(0, t, i);
            n += (a.at(0, t, i) - b2.at(0, t, i)) * (a.at(0, t, i) - b2.at(0, t, i));
        }
        return 10 * std::log10(s / n);
    };
    EXPECT_GT(row_snr(K, d.k, 2), 10.0);
    EXPECT_GT(row_snr(V, d.v, 2), 10.0);

    for (uint32_t i = 0; i < D; ++i) kt.set(0, 4, i, 3e36 * (i % 2 ? 1 : -1));
    nq_block *bad = nullptr;
    nq_kv_desc kv = kv_desc(kt, vt, T);
    EXPECT_EQ(nq_compress_kv(ctx.get(), &kv, nullptr, nullptr, &bad), NQ_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(bad, nullptr);
    EXPECT_NE(std::string(nq_last_error()).find("kv.k"), std::string::npos) << nq_last_error();
}

// A sequence decodes into a paged cache when its blocks end on page boundaries (and
// says so when they do not).
TEST(RoundTrip, SequenceDecodeIntoPagedLayout) {
    const uint32_t H = 2, D = 32, P = 16;
    Ctx ctx = make_ctx(plain_config(H, D, 4, 4));
    for (bool aligned : {true, false}) {
        const std::vector<uint32_t> chunks = aligned ? std::vector<uint32_t>{32, 16, 48, 7}
                                                     : std::vector<uint32_t>{20, 16};
        nq_sequence *sp = nullptr;
        ASSERT_EQ(nq_sequence_create(ctx.get(), 0, &sp), NQ_OK);
        Seq seq(sp);
        std::vector<Decoded> parts;
        int64_t next = 0;
        for (uint32_t T : chunks) {
            Tensor kt(NQ_DTYPE_F32, Layout::HTD, H, T, D), vt(NQ_DTYPE_F32, Layout::HTD, H, T, D);
            Values K = random_values(H, T, D), V = random_values(H, T, D);
            store(kt, K);
            store(vt, V);
            nq_kv_desc kv = kv_desc(kt, vt, T);
            kv.start_position = next;
            next += T;
            ASSERT_EQ(nq_sequence_append(seq.get(), &kv, nullptr, nullptr), NQ_OK) << nq_last_error();
            parts.push_back(decode_all(ctx.get(), nq_sequence_block(seq.get(), nq_sequence_num_blocks(seq.get()) - 1)));
        }
        const uint32_t total = (uint32_t)next;
        Tensor ko(NQ_DTYPE_F16, Layout::PagedNHD, H, total, D, P), vo(NQ_DTYPE_F16, Layout::PagedHND, H, total, D, P);
        nq_kv_desc out = kv_desc(ko, vo, total);
        nq_status st = nq_sequence_decode(seq.get(), 0, total, &out, nullptr);
        if (!aligned) {
            EXPECT_EQ(st, NQ_ERR_UNSUPPORTED);
            EXPECT_NE(std::string(nq_last_error()).find("page"), std::string::npos) << nq_last_error();
            continue;
        }
        ASSERT_EQ(st, NQ_OK) << nq_last_error();
        uint32_t g = 0;
        for (const Decoded &part : parts)
            for (uint32_t j = 0; j < part.k.T; ++j, ++g)
                for (uint32_t h = 0; h < H; ++h)
                    for (uint32_t d = 0; d < D; ++d) {
                        ASSERT_EQ(ko.get(h, g, d), ref_round_f16(part.k.at(h, j, d))) << "token " << g;
                        ASSERT_EQ(vo.get(h, g, d), ref_round_f16(part.v.at(h, j, d))) << "token " << g;
                    }
        EXPECT_TRUE(ko.only_addressed_written());
        EXPECT_TRUE(vo.only_addressed_written());
    }
}

// Copies of a host block, into allocator memory or a caller's buffer, are the same block.
TEST(RoundTrip, BlockCopyOnTheHost) {
    const uint32_t H = 2, T = 30, D = 16;
    Ctx ctx = make_ctx(plain_config(H, D));
    Block b = compress_random(ctx.get(), H, T, D);
    ASSERT_TRUE(b);
    const void *data;
    size_t bytes;
    ASSERT_EQ(nq_block_data(b.get(), &data, &bytes), NQ_OK);
    std::vector<uint8_t> mem(bytes + 64);
    void *dst = mem.data() + (16 - (uintptr_t)mem.data() % 16) % 16;
    for (void *target : {(void *)nullptr, dst}) {
        nq_block *c = nullptr;
        ASSERT_EQ(nq_block_copy(ctx.get(), b.get(), NQ_MEMORY_HOST, 0, target, target ? bytes : 0, nullptr, &c), NQ_OK)
            << nq_last_error();
        Block copy(c);
        EXPECT_EQ(digest_of(copy.get()), digest_of(b.get()));
        const void *cd;
        size_t cb;
        ASSERT_EQ(nq_block_data(copy.get(), &cd, &cb), NQ_OK);
        if (target) EXPECT_EQ(cd, target);
        EXPECT_EQ(cb, bytes);
        Decoded x = decode_all(ctx.get(), b.get()), y = decode_all(ctx.get(), copy.get());
        EXPECT_EQ(x.k.x, y.k.x);
        EXPECT_EQ(positions_of(copy.get(), 1), positions_of(b.get(), 1));
    }
}
