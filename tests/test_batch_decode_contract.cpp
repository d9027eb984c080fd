// What the header promises about nq_compress_batch, nq_decode_block and
// nq_block_serialize beyond the happy path: a workspace of any alignment, item_status
// written for every item whatever fails, a NULL workspace with a size refused, K and V
// outputs that share elements refused (interleaved ones that do not are fine), and an
// archive that either has its exact bytes or fails with NQ_ERR_OUT_OF_MEMORY.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "api_harness.h"

using namespace nqt;

namespace {

constexpr uint32_t H = 2, T = 48, D = 16;

struct Input {
    Tensor k{NQ_DTYPE_F16, Layout::HTD, H, T, D}, v{NQ_DTYPE_F16, Layout::HTD, H, T, D};
    nq_kv_desc kv;
    Input() {
        Values K = random_values(H, T, D), V = random_values(H, T, D);
        store(k, K);
        store(v, V);
        kv = kv_desc(k, v, T);
    }
};

}  // namespace

// The header says pointers need only their element's alignment: a workspace at any
// byte offset works and gives the blocks a NULL workspace gives.
TEST(BatchContract, WorkspaceOfAnyAlignment) {
    Input in;
    nq_config c = plain_config(H, D);
    c.evict_fraction = 0.25f;
    Ctx ctx = make_ctx(c);
    nq_kv_desc items[2] = {in.kv, in.kv};
    items[1].num_tokens = T / 2;
    size_t bytes = 0;
    ASSERT_EQ(nq_workspace_size(ctx.get(), items, 2, &bytes), NQ_OK);
    nq_block *want[2] = {nullptr, nullptr};
    ASSERT_EQ(nq_compress_batch(ctx.get(), items, nullptr, 2, nullptr, nullptr, 0, nullptr, want, nullptr), NQ_OK)
        << nq_last_error();
    Block w0(want[0]), w1(want[1]);
    std::vector<uint8_t> buf(bytes + 128);
    for (size_t skew : {0, 1, 3, 8, 17, 63}) {
        uint8_t *ws = buf.data() + (64 - (uintptr_t)buf.data() % 64) % 64 + skew;
        nq_block *out[2] = {nullptr, nullptr};
        nq_status st[2] = {NQ_ERR_INTERNAL, NQ_ERR_INTERNAL};
        ASSERT_EQ(nq_compress_batch(ctx.get(), items, nullptr, 2, nullptr, ws, bytes, nullptr, out, st), NQ_OK)
            << "skew " << skew << ": " << nq_last_error();
        Block b0(out[0]), b1(out[1]);
        EXPECT_EQ(st[0], NQ_OK);
        EXPECT_EQ(st[1], NQ_OK);
        EXPECT_EQ(digest_of(b0.get()), digest_of(w0.get()));
        EXPECT_EQ(digest_of(b1.get()), digest_of(w1.get()));
    }
    // A caller's block buffer must be 16-byte aligned, as the header says: refused
    // clearly otherwise.
    size_t need = 0;
    ASSERT_EQ(nq_compress_bound(ctx.get(), &items[0], &need), NQ_OK);
    std::vector<uint8_t> dbuf(need + 32);
    nq_buffer dst{dbuf.data() + (16 - (uintptr_t)dbuf.data() % 16) % 16 + 4, need};
    nq_block *out = nullptr;
    nq_status st = NQ_OK;
    EXPECT_EQ(nq_compress_batch(ctx.get(), items, nullptr, 1, &dst, nullptr, 0, nullptr, &out, &st),
              NQ_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(nq_last_error()).find("16-byte aligned"), std::string::npos) << nq_last_error();
    EXPECT_EQ(st, NQ_ERR_INVALID_ARGUMENT);
}

// item_status is written for every item, also when the call fails before the items.
TEST(BatchContract, ItemStatusIsAlwaysWritten) {
    Input in;
    Ctx ctx = make_ctx(plain_config(H, D));
    nq_kv_desc items[3] = {in.kv, in.kv, in.kv};
    nq_block *out[3] = {nullptr, nullptr, nullptr};
    auto fresh = [](nq_status *st) {
        for (int i = 0; i < 3; ++i) st[i] = (nq_status)777;
    };
    nq_status st[3];
    fresh(st);
    EXPECT_EQ(nq_compress_batch(ctx.get(), nullptr, nullptr, 3, nullptr, nullptr, 0, nullptr, out, st),
              NQ_ERR_INVALID_ARGUMENT);
    for (nq_status s : st) EXPECT_EQ(s, NQ_ERR_INVALID_ARGUMENT);
    fresh(st);
    EXPECT_EQ(nq_compress_batch(nullptr, items, nullptr, 3, nullptr, nullptr, 0, nullptr, out, st),
              NQ_ERR_INVALID_ARGUMENT);
    for (nq_status s : st) EXPECT_EQ(s, NQ_ERR_INVALID_ARGUMENT);
    fresh(st);
    items[0].size = 12;  // the array cannot be strided
    EXPECT_EQ(nq_compress_batch(ctx.get(), items, nullptr, 3, nullptr, nullptr, 0, nullptr, out, st),
              NQ_ERR_INVALID_ARGUMENT);
    for (nq_status s : st) EXPECT_EQ(s, NQ_ERR_INVALID_ARGUMENT);
    items[0].size = sizeof(nq_kv_desc);
    // A NULL workspace that claims bytes is a caller's bug, not "allocate for me".
    fresh(st);
    EXPECT_EQ(nq_compress_batch(ctx.get(), items, nullptr, 3, nullptr, nullptr, 4096, nullptr, out, st),
              NQ_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(nq_last_error()).find("workspace is NULL"), std::string::npos) << nq_last_error();
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(st[i], NQ_ERR_INVALID_ARGUMENT);
        EXPECT_EQ(out[i], nullptr);
    }
    // One bad item: the others still run and each status is its own.
    fresh(st);
    items[1].dtype = (nq_dtype)9;
    EXPECT_EQ(nq_compress_batch(ctx.get(), items, nullptr, 3, nullptr, nullptr, 0, nullptr, out, st),
              NQ_ERR_UNSUPPORTED);
    EXPECT_EQ(st[0], NQ_OK);
    EXPECT_EQ(st[1], NQ_ERR_UNSUPPORTED);
    EXPECT_EQ(st[2], NQ_OK);
    for (nq_block *b : out) nq_block_free(b);
}

// nq_decode_block is the primary name; nq_decode (0.1) gives the same rows.
TEST(DecodeContract, DecodeBlockEqualsItsAlias) {
    Input in;
    Ctx ctx = make_ctx(plain_config(H, D));
    Block blk = compress(ctx.get(), in.kv);
    ASSERT_TRUE(blk);
    for (auto r : {std::pair<uint32_t, uint32_t>{0, T}, {5, 17}, {T - 1, T}}) {
        const uint32_t n = r.second - r.first;
        Tensor a(NQ_DTYPE_BF16, Layout::THD, H, n, D), b(NQ_DTYPE_BF16, Layout::THD, H, n, D);
        Tensor c(NQ_DTYPE_BF16, Layout::THD, H, n, D), d(NQ_DTYPE_BF16, Layout::THD, H, n, D);
        nq_kv_desc o1 = kv_desc(a, b, n), o2 = kv_desc(c, d, n);
        ASSERT_EQ(nq_decode_block(ctx.get(), blk.get(), r.first, r.second, &o1, nullptr), NQ_OK) << nq_last_error();
        ASSERT_EQ(nq_decode(ctx.get(), blk.get(), r.first, r.second, &o2, nullptr), NQ_OK) << nq_last_error();
        EXPECT_EQ(load(a, H, D).x, load(c, H, D).x);
        EXPECT_EQ(load(b, H, D).x, load(d, H, D).x);
    }
    nq_kv_desc bad = in.kv;
    EXPECT_EQ(nq_decode_block(ctx.get(), blk.get(), 0, T + 1, &bad, nullptr), NQ_ERR_OUT_OF_RANGE);
    EXPECT_EQ(nq_decode_block(ctx.get(), nullptr, 0, T, &bad, nullptr), NQ_ERR_INVALID_ARGUMENT);
}

// K and V outputs that share elements are refused (the rows would overwrite each
// other); a fused cache that interleaves K and V rows without sharing one is fine and
// gets the rows separate buffers get. Also through nq_sequence_decode.
TEST(DecodeContract, OverlappingKAndVOutputsAreRefused) {
    Input in;
    Ctx ctx = make_ctx(plain_config(H, D));
    Block blk = compress(ctx.get(), in.kv);
    ASSERT_TRUE(blk);
    Decoded want = decode_f32(ctx.get(), blk.get(), H, D, 0, T);

    std::vector<float> buf((size_t)2 * H * T * D + 64, 0.0f);
    nq_kv_desc out;
    nq_kv_desc_init(&out);
    out.dtype = NQ_DTYPE_F32;
    out.num_tokens = T;
    nq_layout_contiguous(&out.k_layout, T, D);
    out.v_layout = out.k_layout;
    auto expect_overlap = [&](const char *what) {
        EXPECT_EQ(nq_decode_block(ctx.get(), blk.get(), 0, T, &out, nullptr), NQ_ERR_INVALID_ARGUMENT) << what;
        EXPECT_NE(std::string(nq_last_error()).find("overlap"), std::string::npos) << what << ": " << nq_last_error();
    };
    out.k = out.v = buf.data();
    expect_overlap("one buffer");
    out.v = buf.data() + (size_t)H * T * D - 1;  // the last K element is V's first
    expect_overlap("one shared element");
    out.v_layout.stride_head = D;  // a different layout over the same memory
    out.v_layout.stride_token = (int64_t)H * D;
    out.v = buf.data() + 8;
    expect_overlap("different layouts over one range");

    // Fused [token][K|V][head][dim]: K at 0, V at H*D, token stride 2*H*D.
    out.k_layout.stride_token = out.v_layout.stride_token = 2 * (int64_t)H * D;
    out.k_layout.stride_head = out.v_layout.stride_head = D;
    out.k = buf.data();
    out.v = buf.data() + (size_t)H * D;
    ASSERT_EQ(nq_decode_block(ctx.get(), blk.get(), 0, T, &out, nullptr), NQ_OK) << nq_last_error();
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < T; ++t)
            for (uint32_t d = 0; d < D; ++d) {
                ASSERT_EQ(buf[(size_t)t * 2 * H * D + h * D + d], (float)want.k.at(h, t, d));
                ASSERT_EQ(buf[(size_t)t * 2 * H * D + H * D + h * D + d], (float)want.v.at(h, t, d));
            }

    nq_sequence *s = nullptr;
    ASSERT_EQ(nq_sequence_create(ctx.get(), 0, &s), NQ_OK);
    Seq seq(s);
    ASSERT_EQ(nq_sequence_append(s, &in.kv, nullptr, nullptr), NQ_OK) << nq_last_error();
    out.v = out.k;
    EXPECT_EQ(nq_sequence_decode(s, 0, T, &out, nullptr), NQ_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(nq_last_error()).find("overlap"), std::string::npos) << nq_last_error();
}

// Every allocation nq_block_serialize makes may fail: the call then fails with
// NQ_ERR_OUT_OF_MEMORY, and when it succeeds the archive is byte for byte the one an
// unfailing allocator gives (zstd's scratch used to come from the allocator, and a
// failure there silently stored sections uncompressed).
TEST(SerializeContract, AllocationFailuresNeverChangeTheArchive) {
    const uint32_t TT = 256;
    Tensor k(NQ_DTYPE_F16, Layout::HTD, H, TT, D), v(NQ_DTYPE_F16, Layout::HTD, H, TT, D);
    Values K = random_values(H, TT, D), V = random_values(H, TT, D);
    store(k, K);
    store(v, V);
    const nq_kv_desc kv = kv_desc(k, v, TT);
    nq_config c = plain_config(H, D);
    c.evict_fraction = 0.5f;  // per-head positions: a section zstd shrinks
    c.evict_mode = NQ_EVICT_PER_HEAD;
    Ctx plain = make_ctx(c);
    Block blk = compress(plain.get(), kv);
    ASSERT_TRUE(blk);
    size_t cap = 0;
    ASSERT_EQ(nq_block_serialize_bound(blk.get(), &cap), NQ_OK);
    std::vector<uint8_t> want(cap), got(cap);
    size_t want_n = 0;
    ASSERT_EQ(nq_block_serialize(plain.get(), blk.get(), want.data(), cap, &want_n), NQ_OK) << nq_last_error();

    long failed = 0;
    for (long fail_at = 0; fail_at < 16; ++fail_at) {
        CountingAllocator a;
        c.allocator = a.get();
        nq_context *ctx = nullptr;
        ASSERT_EQ(nq_context_create(&c, &ctx), NQ_OK);
        a.fail_at = a.allocs + fail_at;  // count from after the context
        size_t n = 0;
        const nq_status st = nq_block_serialize(ctx, blk.get(), got.data(), cap, &n);
        if (st == NQ_OK) {
            EXPECT_EQ(n, want_n) << "failure " << fail_at;
            EXPECT_TRUE(std::equal(want.begin(), want.begin() + want_n, got.begin())) << "failure " << fail_at;
        } else {
            EXPECT_EQ(st, NQ_ERR_OUT_OF_MEMORY) << nq_last_error();
            ++failed;
        }
        nq_context_free(ctx);
        EXPECT_EQ(a.live_count(), 0u);
    }
    EXPECT_GE(failed, 1) << "the positions copy comes from the allocator";
}
