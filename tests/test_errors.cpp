// Bad input never crashes and never corrupts: every public function given NULL
// pointers, bad sizes, misaligned pointers, overlapping strides, unsupported dtypes or
// bad config fields returns the right status and a message naming the field. Older
// (smaller) structs still work, newer ones with unknown non-zero bytes are refused,
// errors stay per thread, and an allocator that returns NULL gives
// NQ_ERR_OUT_OF_MEMORY with nothing leaked.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "api_harness.h"

using namespace nqt;

#define EXPECT_ERR(call, status, substr)                                                          \
    do {                                                                                          \
        nq_status st_ = (call);                                                                   \
        EXPECT_EQ(st_, status) << #call << ": " << nq_last_error();                               \
        EXPECT_NE(std::string(nq_last_error()).find(substr), std::string::npos)                   \
            << #call << ": message '" << nq_last_error() << "' does not name '" << substr << "'"; \
    } while (0)

namespace {

// A small valid input and context to break one piece at a time.
struct Fixture {
    static constexpr uint32_t H = 2, T = 24, D = 16;
    Tensor k{NQ_DTYPE_F16, Layout::HTD, H, T, D}, v{NQ_DTYPE_F16, Layout::HTD, H, T, D};
    Ctx ctx, evicting;
    nq_kv_desc kv;
    Fixture() {
        Values K = random_values(H, T, D), V = random_values(H, T, D);
        store(k, K);
        store(v, V);
        kv = kv_desc(k, v, T);
        ctx = make_ctx(plain_config(H, D));
        nq_config c = plain_config(H, D);
        c.evict_fraction = 0.5f;
        evicting = make_ctx(c);
    }
    Block block() { return compress(ctx.get(), kv); }
};

}  // namespace

TEST(Errors, StatusStringsAndVersion) {
    for (int s = 0; s <= 11; ++s) {
        const char *str = nq_status_string((nq_status)s);
        ASSERT_NE(str, nullptr);
        EXPECT_EQ(std::string(str).rfind("NQ_", 0), 0u) << str;
    }
    EXPECT_NE(std::string(nq_status_string(NQ_ERR_CORRUPT)).find("NQ_ERR_CORRUPT"), std::string::npos);
    EXPECT_NE(nq_status_string((nq_status)99), nullptr);
    EXPECT_EQ(nq_version_number(), (uint32_t)NQ_VERSION_NUMBER);
    EXPECT_EQ(std::string(nq_version_string()), std::to_string(NQ_VERSION_MAJOR) + "." +
                                                    std::to_string(NQ_VERSION_MINOR) + "." +
                                                    std::to_string(NQ_VERSION_PATCH));
    EXPECT_NE(nq_last_error(), nullptr);
}

TEST(Errors, FreeFunctionsAcceptNull) {
    nq_context_free(nullptr);
    nq_block_free(nullptr);
    nq_sequence_free(nullptr);
    nq_config_init(nullptr);
    nq_kv_desc_init(nullptr);
    nq_score_desc_init(nullptr);
    nq_layout_contiguous(nullptr, 1, 8);
    EXPECT_EQ(nq_sequence_num_blocks(nullptr), 0u);
    EXPECT_EQ(nq_sequence_block(nullptr, 0), nullptr);
    EXPECT_STREQ(nq_context_cpu_isa(nullptr), "none");
    EXPECT_EQ(nq_abi_sizeof(nullptr), (size_t)-1);
    EXPECT_EQ(nq_abi_offsetof("nq_config", nullptr), (size_t)-1);
}

TEST(Errors, ContextConfigFields) {
    struct Case {
        const char *field;
        nq_status status;
        std::function<void(nq_config &)> mutate;
    };
    static nq_layer_override bad_override[1];
    const Case cases[] = {
        {"config.head_dim", NQ_ERR_UNSUPPORTED, [](nq_config &c) { c.head_dim = 12; }},
        {"config.head_dim", NQ_ERR_UNSUPPORTED, [](nq_config &c) { c.head_dim = 520; }},
        {"config.head_dim", NQ_ERR_UNSUPPORTED, [](nq_config &c) { c.head_dim = 0; }},
        {"config.num_kv_heads", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.num_kv_heads = 0; }},
        {"config.num_kv_heads", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.num_kv_heads = 5000; }},
        {"config.num_q_heads", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.num_kv_heads = 2, c.num_q_heads = 3; }},
        {"config.preset", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.preset = (nq_preset)42; }},
        {"config.codec", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.codec = (nq_codec)0; }},
        {"config.k_bits", NQ_ERR_UNSUPPORTED, [](nq_config &c) { c.k_bits = 9; }},
        {"config.v_bits", NQ_ERR_UNSUPPORTED, [](nq_config &c) { c.v_bits = 16; }},
        {"config.evict_fraction", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.evict_fraction = 1.0f; }},
        {"config.evict_fraction", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.evict_fraction = NAN; }},
        {"config.target_ratio", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.target_ratio = -2.0f; }},
        {"config.target_ratio", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.target_ratio = NAN; }},
        {"config.evict_mode", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.evict_mode = (nq_evict_mode)0; }},
        {"config.rope.mode", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.rope.mode = (nq_rope_mode)3; }},
        {"config.rope.pairing", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.rope.pairing = (nq_rope_pairing)0; }},
        {"config.rope.rotary_dims", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.rope.rotary_dims = 7; }},
        {"config.rope.rotary_dims", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.rope.rotary_dims = 130; }},
        {"config.rope.theta", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.rope.theta = 0.5; }},
        {"config.rope.theta", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.rope.theta = NAN; }},
        {"config.rope.scaling", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.rope.scaling = (nq_rope_scaling)5; }},
        {"config.rope.factor", NQ_ERR_INVALID_ARGUMENT,
         [](nq_config &c) { c.rope.scaling = NQ_ROPE_SCALING_LINEAR, c.rope.factor = 0.5; }},
        {"config.rope.original_max_position", NQ_ERR_INVALID_ARGUMENT,
         [](nq_config &c) { c.rope.scaling = NQ_ROPE_SCALING_LLAMA3, c.rope.factor = 8; }},
        {"config.rope.low_freq_factor", NQ_ERR_INVALID_ARGUMENT,
         [](nq_config &c) {
             c.rope.scaling = NQ_ROPE_SCALING_LLAMA3, c.rope.factor = 8, c.rope.original_max_position = 8192;
             c.rope.high_freq_factor = 0.5;
         }},
        {"config.rope.beta_fast", NQ_ERR_INVALID_ARGUMENT,
         [](nq_config &c) {
             c.rope.scaling = NQ_ROPE_SCALING_YARN, c.rope.factor = 4, c.rope.original_max_position = 4096;
             c.rope.beta_slow = -1;
         }},
        {"config.backend", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.backend = (nq_backend)7; }},
        {"config.cpu_isa", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.cpu_isa = (nq_cpu_isa)7; }},
        {"config.num_threads", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.num_threads = 100000; }},
        {"config.allocator", NQ_ERR_INVALID_ARGUMENT,
         [](nq_config &c) { c.allocator.alloc = CountingAllocator::alloc_cb; }},
        {"config.overrides", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.num_overrides = 2; }},
        {"config.overrides[0]", NQ_ERR_INVALID_ARGUMENT,
         [](nq_config &c) {
             bad_override[0] = nq_layer_override{5, 5, 0, 0, -1.0f, 0};
             c.overrides = bad_override, c.num_overrides = 1;
         }},
        {"config.overrides[0]", NQ_ERR_UNSUPPORTED,
         [](nq_config &c) {
             bad_override[0] = nq_layer_override{0, 5, 9, 0, -1.0f, 0};
             c.overrides = bad_override, c.num_overrides = 1;
         }},
        {"config.overrides[0].evict_fraction", NQ_ERR_INVALID_ARGUMENT,
         [](nq_config &c) {
             bad_override[0] = nq_layer_override{0, 5, 0, 0, 1.5f, 0};
             c.overrides = bad_override, c.num_overrides = 1;
         }},
        {"config.archive_zstd_level", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.archive_zstd_level = 23; }},
        {"nq_config.size", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.size = 0; }},
        {"nq_config.size", NQ_ERR_INVALID_ARGUMENT, [](nq_config &c) { c.size = (size_t)1 << 40; }},
    };
    for (const Case &cs : cases) {
        nq_config c;
        nq_config_init(&c);
        cs.mutate(c);
        nq_context *ctx = reinterpret_cast<nq_context *>(&c);
        EXPECT_ERR(nq_context_create(&c, &ctx), cs.status, cs.field);
        EXPECT_EQ(ctx, nullptr) << cs.field;
    }
    nq_config c;
    nq_config_init(&c);
    c.backend = NQ_BACKEND_HIP;
    nq_context *ctx = nullptr;
    EXPECT_ERR(nq_context_create(&c, &ctx), NQ_ERR_BACKEND_UNAVAILABLE, "config.backend");
    EXPECT_ERR(nq_context_create(nullptr, &ctx), NQ_ERR_INVALID_ARGUMENT, "cfg");
    EXPECT_ERR(nq_context_create(&c, nullptr), NQ_ERR_INVALID_ARGUMENT, "out");
}

// A caller built against an older header sends a smaller struct: the rest defaults.
// A newer caller's larger struct is fine while the unknown bytes are zero.
TEST(Errors, StructSizesOlderAndNewer) {
    struct BigConfig {
        nq_config c;
        uint64_t future[4];
    } big;
    std::memset(&big, 0, sizeof big);
    nq_config_init(&big.c);
    big.c.size = sizeof big;
    big.c.head_dim = 64;
    nq_context *ctx = nullptr;
    ASSERT_EQ(nq_context_create(&big.c, &ctx), NQ_OK) << nq_last_error();
    nq_context_free(ctx);
    big.future[2] = 1;
    EXPECT_ERR(nq_context_create(&big.c, &ctx), NQ_ERR_UNSUPPORTED, "nq_config");
    EXPECT_EQ(ctx, nullptr);

    // Older: without the fields from `overrides` on (all past them take defaults even if
    // the caller's memory beyond its struct holds garbage).
    nq_config old;
    std::memset(&old, 0x5A, sizeof old);
    nq_config_init(&old);
    old.head_dim = 32;
    old.archive_zstd_level = -7;  // beyond the old size: must be ignored
    old.size = offsetof(nq_config, overrides);
    ASSERT_EQ(nq_context_create(&old, &ctx), NQ_OK) << nq_last_error();
    Ctx holder(ctx);
    nq_config got;
    got.size = sizeof got;
    ASSERT_EQ(nq_context_get_config(ctx, &got), NQ_OK);
    EXPECT_EQ(got.head_dim, 32u);
    EXPECT_EQ(got.archive_zstd_level, 3);
    EXPECT_EQ(got.num_overrides, 0u);
    // Older output structs: only their bytes are written.
    struct {
        nq_layer_params p;
        uint8_t canary[16];
    } lp;
    std::memset(&lp, 0xCC, sizeof lp);
    lp.p.size = offsetof(nq_layer_params, fp16_sinks);
    ASSERT_EQ(nq_context_layer_params(ctx, 0, &lp.p), NQ_OK);
    EXPECT_EQ(lp.p.k_bits, 3u);
    const uint8_t *raw = reinterpret_cast<const uint8_t *>(&lp.p);
    for (size_t i = offsetof(nq_layer_params, fp16_sinks); i < sizeof lp; ++i) ASSERT_EQ(raw[i], 0xCC) << i;

    // nq_kv_desc: older without positions/start_position; newer with zero or non-zero tail.
    Fixture f;
    struct {
        nq_kv_desc kv;
        uint64_t future[2];
    } kbig;
    std::memset(&kbig, 0, sizeof kbig);
    kbig.kv = f.kv;
    kbig.kv.size = sizeof kbig;
    nq_block *b = nullptr;
    ASSERT_EQ(nq_compress_kv(f.ctx.get(), &kbig.kv, nullptr, nullptr, &b), NQ_OK) << nq_last_error();
    const uint64_t want = digest_of(b);
    nq_block_free(b);
    kbig.future[1] = 7;
    EXPECT_ERR(nq_compress_kv(f.ctx.get(), &kbig.kv, nullptr, nullptr, &b), NQ_ERR_UNSUPPORTED, "nq_kv_desc");
    nq_kv_desc kold = f.kv;
    kold.start_position = 12345;  // beyond the old size: ignored
    kold.size = offsetof(nq_kv_desc, positions);
    ASSERT_EQ(nq_compress_kv(f.ctx.get(), &kold, nullptr, nullptr, &b), NQ_OK) << nq_last_error();
    EXPECT_EQ(digest_of(b), want);
    EXPECT_EQ(info_of(b).first_position, 0);
    // nq_block_info of an older caller
    struct {
        nq_block_info i;
        uint8_t canary[16];
    } bi;
    std::memset(&bi, 0xCC, sizeof bi);
    bi.i.size = offsetof(nq_block_info, ratio);
    ASSERT_EQ(nq_block_get_info(b, &bi.i), NQ_OK);
    EXPECT_EQ(bi.i.tokens_kept, Fixture::T);
    raw = reinterpret_cast<const uint8_t *>(&bi.i);
    for (size_t i = offsetof(nq_block_info, ratio); i < sizeof bi; ++i) ASSERT_EQ(raw[i], 0xCC) << i;
    nq_block_free(b);

    // nq_score_desc: a newer one with unknown bytes set is refused when scores are read.
    struct {
        nq_score_desc s;
        uint64_t future;
    } sbig;
    std::memset(&sbig, 0, sizeof sbig);
    nq_score_desc_init(&sbig.s);
    sbig.s.size = sizeof sbig;
    sbig.future = 1;
    EXPECT_ERR(nq_compress_kv(f.evicting.get(), &f.kv, &sbig.s, nullptr, &b), NQ_ERR_UNSUPPORTED, "nq_score_desc");
    sbig.future = 0;
    ASSERT_EQ(nq_compress_kv(f.evicting.get(), &f.kv, &sbig.s, nullptr, &b), NQ_OK) << nq_last_error();
    nq_block_free(b);
}

TEST(Errors, KvDescriptors) {
    Fixture f;
    nq_context *ctx = f.ctx.get();
    auto check = [&](const char *field, nq_status status, std::function<void(nq_kv_desc &)> mutate) {
        nq_kv_desc kv = f.kv;
        mutate(kv);
        nq_block *b = reinterpret_cast<nq_block *>(&kv);
        EXPECT_ERR(nq_compress_kv(ctx, &kv, nullptr, nullptr, &b), status, field);
        EXPECT_EQ(b, nullptr) << field;
        size_t bytes = 777;
        nq_status st = nq_compress_bound(ctx, &kv, &bytes);
        EXPECT_EQ(st, status) << "compress_bound " << field;
        EXPECT_EQ(bytes, 777u) << "output written on failure";
    };
    check("kv.dtype", NQ_ERR_UNSUPPORTED, [](nq_kv_desc &k) { k.dtype = (nq_dtype)0; });
    check("kv.dtype", NQ_ERR_UNSUPPORTED, [](nq_kv_desc &k) { k.dtype = (nq_dtype)4; });
    check("kv.memory", NQ_ERR_BACKEND_UNAVAILABLE, [](nq_kv_desc &k) { k.memory = NQ_MEMORY_HIP; });
    check("kv.memory", NQ_ERR_INVALID_ARGUMENT, [](nq_kv_desc &k) { k.memory = (nq_memory)9; });
    check("kv.num_tokens", NQ_ERR_INVALID_ARGUMENT, [](nq_kv_desc &k) { k.num_tokens = 0; });
    check("kv.k", NQ_ERR_INVALID_ARGUMENT, [](nq_kv_desc &k) { k.k = nullptr; });
    check("kv.v", NQ_ERR_INVALID_ARGUMENT, [](nq_kv_desc &k) { k.v = nullptr; });
    check("kv.k is not aligned", NQ_ERR_INVALID_ARGUMENT, [](nq_kv_desc &k) { k.k = (char *)k.k + 1; });
    check("kv.v is not aligned", NQ_ERR_INVALID_ARGUMENT,
          [](nq_kv_desc &k) { k.dtype = NQ_DTYPE_F32, k.v = (char *)k.v + 2; });
    check("overlap", NQ_ERR_INVALID_ARGUMENT, [](nq_kv_desc &k) { k.k_layout.stride_token = 0; });
    check("kv.v_layout", NQ_ERR_INVALID_ARGUMENT, [](nq_kv_desc &k) { k.v_layout.stride_head = 8; });
    check("overlap", NQ_ERR_INVALID_ARGUMENT, [](nq_kv_desc &k) { k.k_layout.stride_dim = 2; });
    check("overlap", NQ_ERR_INVALID_ARGUMENT,
          [](nq_kv_desc &k) { k.k_layout.stride_head = INT64_MAX / 2, k.k_layout.stride_token = INT64_MAX / 4; });
    check("kv.k_layout.kind", NQ_ERR_INVALID_ARGUMENT, [](nq_kv_desc &k) { k.k_layout.kind = (nq_layout_kind)0; });
    check("kv.positions[3]", NQ_ERR_INVALID_ARGUMENT, [](nq_kv_desc &k) {
        static int64_t pos[Fixture::T];
        for (uint32_t i = 0; i < Fixture::T; ++i) pos[i] = i;
        pos[3] = 2;
        k.positions = pos;
    });
    check("kv.positions[0]", NQ_ERR_INVALID_ARGUMENT, [](nq_kv_desc &k) {
        static int64_t pos[Fixture::T];
        for (uint32_t i = 0; i < Fixture::T; ++i) pos[i] = (int64_t)i - 1;
        k.positions = pos;
    });
    check("kv.start_position", NQ_ERR_INVALID_ARGUMENT, [](nq_kv_desc &k) { k.start_position = -1; });
    check("kv.start_position", NQ_ERR_INVALID_ARGUMENT, [](nq_kv_desc &k) { k.start_position = (1ll << 32) - 5; });
    check("nq_kv_desc_init", NQ_ERR_INVALID_ARGUMENT, [](nq_kv_desc &k) { k.size = 4; });

    // Paged layouts.
    Tensor pk(NQ_DTYPE_F16, Layout::PagedNHD, Fixture::H, Fixture::T, Fixture::D, 8);
    auto paged = [&](const char *field, std::function<void(nq_layout &, std::vector<int32_t> &)> mutate) {
        nq_kv_desc kv = f.kv;
        kv.k = pk.base();
        kv.k_layout = pk.layout();
        std::vector<int32_t> table(pk.layout().page_table, pk.layout().page_table + 3);
        kv.k_layout.page_table = table.data();
        mutate(kv.k_layout, table);
        nq_block *b = nullptr;
        EXPECT_ERR(nq_compress_kv(ctx, &kv, nullptr, nullptr, &b), NQ_ERR_INVALID_ARGUMENT, field);
    };
    paged("kv.k_layout.page_size", [](nq_layout &l, std::vector<int32_t> &) { l.page_size = 0; });
    paged("kv.k_layout.page_table is NULL", [](nq_layout &l, std::vector<int32_t> &) { l.page_table = nullptr; });
    paged("kv.k_layout.num_pages", [](nq_layout &l, std::vector<int32_t> &) { l.num_pages = 0; });
    paged("kv.k_layout.page_table[1]", [](nq_layout &l, std::vector<int32_t> &t) { t[1] = (int32_t)l.num_pages; });
    paged("kv.k_layout.page_table[2]", [](nq_layout &, std::vector<int32_t> &t) { t[2] = -1; });
    paged("repeats page", [](nq_layout &, std::vector<int32_t> &t) { t[2] = t[0]; });
    paged("overlap", [](nq_layout &l, std::vector<int32_t> &) { l.stride_page = 8; });
    // Inf/NaN values are refused with the head and token.
    pk.set(1, 5, 3, INFINITY);
    {
        nq_kv_desc kv = f.kv;
        kv.k = pk.base();
        kv.k_layout = pk.layout();
        nq_block *b = nullptr;
        EXPECT_ERR(nq_compress_kv(ctx, &kv, nullptr, nullptr, &b), NQ_ERR_INVALID_ARGUMENT, "head 1 token 5");
    }
}

TEST(Errors, ScoreDescriptors) {
    Fixture f;
    std::vector<float> scores(Fixture::H * Fixture::T, 1.0f);
    Tensor q(NQ_DTYPE_F32, Layout::HTD, Fixture::H, 4, Fixture::D);
    auto check = [&](const char *field, nq_status status, std::function<void(nq_score_desc &)> mutate) {
        nq_score_desc sc;
        nq_score_desc_init(&sc);
        mutate(sc);
        nq_block *b = nullptr;
        EXPECT_ERR(nq_compress_kv(f.evicting.get(), &f.kv, &sc, nullptr, &b), status, field);
        EXPECT_EQ(b, nullptr);
    };
    auto given = [&](nq_score_desc &s) {
        s.kind = NQ_SCORES_GIVEN;
        s.scores = scores.data();
        s.score_stride_head = Fixture::T;
        s.score_stride_token = 1;
    };
    auto queries = [&](nq_score_desc &s) {
        s.kind = NQ_SCORES_QUERIES;
        s.queries = q.base();
        s.query_dtype = NQ_DTYPE_F32;
        s.num_queries = 4;
        s.q_stride_head = q.layout().stride_head;
        s.q_stride_token = q.layout().stride_token;
    };
    check("scores.scores", NQ_ERR_INVALID_ARGUMENT, [&](nq_score_desc &s) { given(s), s.scores = nullptr; });
    check("scores.score_stride", NQ_ERR_INVALID_ARGUMENT,
          [&](nq_score_desc &s) { given(s), s.score_stride_token = 0; });
    check("scores.scores is not 4-byte aligned", NQ_ERR_INVALID_ARGUMENT,
          [&](nq_score_desc &s) { given(s), s.scores = (const float *)((const char *)scores.data() + 2); });
    check("scores.queries", NQ_ERR_INVALID_ARGUMENT, [&](nq_score_desc &s) { queries(s), s.queries = nullptr; });
    check("scores.query_dtype", NQ_ERR_UNSUPPORTED, [&](nq_score_desc &s) { queries(s), s.query_dtype = (nq_dtype)0; });
    check("scores.queries is misaligned", NQ_ERR_INVALID_ARGUMENT,
          [&](nq_score_desc &s) { queries(s), s.queries = (const char *)q.base() + 1; });
    check("scores.num_queries", NQ_ERR_INVALID_ARGUMENT, [&](nq_score_desc &s) { queries(s), s.num_queries = 0; });
    check("scores.q_stride", NQ_ERR_INVALID_ARGUMENT, [&](nq_score_desc &s) { queries(s), s.q_stride_token = 3; });
    check("scores.pool_kernel", NQ_ERR_INVALID_ARGUMENT, [&](nq_score_desc &s) { queries(s), s.pool_kernel = 4; });
    check("scores.num_queries", NQ_ERR_INVALID_ARGUMENT, [&](nq_score_desc &s) {
        queries(s), s.num_queries = Fixture::T + 1;  // more queries than keys, no positions given
        s.q_stride_head = (int64_t)(Fixture::T + 1) * Fixture::D;
    });
    check("scores.kind", NQ_ERR_INVALID_ARGUMENT, [&](nq_score_desc &s) { s.kind = (nq_score_kind)7; });
    check("scores.memory", NQ_ERR_BACKEND_UNAVAILABLE, [&](nq_score_desc &s) { given(s), s.memory = NQ_MEMORY_CUDA; });
    check("nq_score_desc.size", NQ_ERR_INVALID_ARGUMENT, [&](nq_score_desc &s) { s.size = 0; });
}

TEST(Errors, CompressDecodeAndSizes) {
    Fixture f;
    nq_context *ctx = f.ctx.get();
    nq_block *b = nullptr;
    EXPECT_ERR(nq_compress_kv(nullptr, &f.kv, nullptr, nullptr, &b), NQ_ERR_INVALID_ARGUMENT, "ctx");
    EXPECT_ERR(nq_compress_kv(ctx, nullptr, nullptr, nullptr, &b), NQ_ERR_INVALID_ARGUMENT, "kv");
    EXPECT_ERR(nq_compress_kv(ctx, &f.kv, nullptr, nullptr, nullptr), NQ_ERR_INVALID_ARGUMENT, "out");
    size_t bytes;
    EXPECT_ERR(nq_compress_bound(nullptr, &f.kv, &bytes), NQ_ERR_INVALID_ARGUMENT, "ctx");
    EXPECT_ERR(nq_compress_bound(ctx, nullptr, &bytes), NQ_ERR_INVALID_ARGUMENT, "kv");
    EXPECT_ERR(nq_compress_bound(ctx, &f.kv, nullptr), NQ_ERR_INVALID_ARGUMENT, "bytes");
    EXPECT_ERR(nq_workspace_size(nullptr, &f.kv, 1, &bytes), NQ_ERR_INVALID_ARGUMENT, "ctx");
    EXPECT_ERR(nq_workspace_size(ctx, nullptr, 1, &bytes), NQ_ERR_INVALID_ARGUMENT, "items");
    EXPECT_ERR(nq_workspace_size(ctx, &f.kv, 1, nullptr), NQ_ERR_INVALID_ARGUMENT, "bytes");
    uint64_t est;
    EXPECT_ERR(nq_estimate_bytes(nullptr, 1, 10, &est), NQ_ERR_INVALID_ARGUMENT, "ctx");
    EXPECT_ERR(nq_estimate_bytes(ctx, 1, 0, &est), NQ_ERR_INVALID_ARGUMENT, "tokens");
    EXPECT_ERR(nq_estimate_bytes(ctx, 1, 1ull << 33, &est), NQ_ERR_INVALID_ARGUMENT, "tokens");
    EXPECT_ERR(nq_estimate_bytes(ctx, 1, 10, nullptr), NQ_ERR_INVALID_ARGUMENT, "bytes");

    // Batches: caller buffers and workspaces.
    nq_block *out[2] = {nullptr, nullptr};
    nq_kv_desc items[2] = {f.kv, f.kv};
    EXPECT_ERR(nq_compress_batch(nullptr, items, nullptr, 2, nullptr, nullptr, 0, nullptr, out, nullptr),
               NQ_ERR_INVALID_ARGUMENT, "ctx");
    EXPECT_ERR(nq_compress_batch(ctx, nullptr, nullptr, 2, nullptr, nullptr, 0, nullptr, out, nullptr),
               NQ_ERR_INVALID_ARGUMENT, "items");
    EXPECT_ERR(nq_compress_batch(ctx, items, nullptr, 2, nullptr, nullptr, 0, nullptr, nullptr, nullptr),
               NQ_ERR_INVALID_ARGUMENT, "out");
    EXPECT_EQ(nq_compress_batch(ctx, items, nullptr, 0, nullptr, nullptr, 0, nullptr, out, nullptr), NQ_OK);
    size_t bound = 0;
    ASSERT_EQ(nq_compress_bound(ctx, &f.kv, &bound), NQ_OK);
    std::vector<uint8_t> mem(2 * bound + 256);
    uint8_t *aligned = mem.data() + (64 - (uintptr_t)mem.data() % 64) % 64;
    nq_buffer dst[2] = {{aligned, bound - 1}, {aligned + bound + 64 - bound % 64, bound}};
    nq_status st[2];
    EXPECT_ERR(nq_compress_batch(ctx, items, nullptr, 2, dst, nullptr, 0, nullptr, out, st), NQ_ERR_BUFFER_TOO_SMALL,
               "item 0: dst.capacity");
    EXPECT_EQ(st[0], NQ_ERR_BUFFER_TOO_SMALL);
    EXPECT_EQ(st[1], NQ_OK);
    EXPECT_EQ(out[0], nullptr);
    nq_block_free(out[1]);
    dst[0] = {aligned + 8, bound};
    EXPECT_ERR(nq_compress_batch(ctx, items, nullptr, 1, dst, nullptr, 0, nullptr, out, st), NQ_ERR_INVALID_ARGUMENT,
               "16-byte aligned");
    dst[0] = {nullptr, bound};
    EXPECT_ERR(nq_compress_batch(ctx, items, nullptr, 1, dst, nullptr, 0, nullptr, out, st), NQ_ERR_INVALID_ARGUMENT,
               "dst.data");
    size_t ws = 0;
    ASSERT_EQ(nq_workspace_size(ctx, items, 2, &ws), NQ_OK);
    // Any alignment of the workspace: the library rounds its start up (within ws).
    std::vector<uint8_t> ws_mem(ws + 4);
    EXPECT_EQ(nq_compress_batch(ctx, items, nullptr, 2, nullptr, ws_mem.data() + 4, ws, nullptr, out, nullptr), NQ_OK)
        << nq_last_error();
    for (int i = 0; i < 2; ++i) nq_block_free(out[i]);
    EXPECT_ERR(nq_compress_batch(ctx, items, nullptr, 2, nullptr, aligned, 16, nullptr, out, nullptr),
               NQ_ERR_BUFFER_TOO_SMALL, "workspace");

    // Decode.
    Block blk = f.block();
    Tensor ok(NQ_DTYPE_F16, Layout::HTD, Fixture::H, Fixture::T, Fixture::D),
        ov(NQ_DTYPE_F16, Layout::HTD, Fixture::H, Fixture::T, Fixture::D);
    nq_kv_desc out_kv = kv_desc(ok, ov, Fixture::T);
    EXPECT_ERR(nq_decode(nullptr, blk.get(), 0, Fixture::T, &out_kv, nullptr), NQ_ERR_INVALID_ARGUMENT, "ctx");
    EXPECT_ERR(nq_decode(ctx, nullptr, 0, Fixture::T, &out_kv, nullptr), NQ_ERR_INVALID_ARGUMENT, "blk");
    EXPECT_ERR(nq_decode(ctx, blk.get(), 0, Fixture::T, nullptr, nullptr), NQ_ERR_INVALID_ARGUMENT, "out");
    EXPECT_ERR(nq_decode(ctx, blk.get(), 0, Fixture::T + 1, &out_kv, nullptr), NQ_ERR_OUT_OF_RANGE, "token range");
    EXPECT_ERR(nq_decode(ctx, blk.get(), 5, 4, &out_kv, nullptr), NQ_ERR_OUT_OF_RANGE, "token range");
    EXPECT_ERR(nq_decode(ctx, blk.get(), 0, 5, &out_kv, nullptr), NQ_ERR_INVALID_ARGUMENT, "out.num_tokens");
    nq_kv_desc bad = out_kv;
    bad.dtype = (nq_dtype)8;
    EXPECT_ERR(nq_decode(ctx, blk.get(), 0, Fixture::T, &bad, nullptr), NQ_ERR_UNSUPPORTED, "out.dtype");
    bad = out_kv;
    bad.k = nullptr;
    EXPECT_ERR(nq_decode(ctx, blk.get(), 0, Fixture::T, &bad, nullptr), NQ_ERR_INVALID_ARGUMENT, "out.k");
    bad = out_kv;
    bad.v_layout.stride_token = 1;
    EXPECT_ERR(nq_decode(ctx, blk.get(), 0, Fixture::T, &bad, nullptr), NQ_ERR_INVALID_ARGUMENT, "out.v_layout");
    bad = out_kv;
    bad.memory = NQ_MEMORY_CUDA;
    EXPECT_ERR(nq_decode(ctx, blk.get(), 0, Fixture::T, &bad, nullptr), NQ_ERR_BACKEND_UNAVAILABLE, "out.memory");
    Ctx other = make_ctx(plain_config(Fixture::H, 32));
    EXPECT_ERR(nq_decode(other.get(), blk.get(), 0, Fixture::T, &out_kv, nullptr), NQ_ERR_INVALID_ARGUMENT,
               "matching context");
    EXPECT_TRUE(ok.only_addressed_written());
    // Nothing was written by the failed decodes.
    for (uint32_t t = 0; t < Fixture::T; ++t) ASSERT_EQ(ok.get(0, t, 0), ref_f16_value(0xA5A5));
}

TEST(Errors, BlocksArchivesAndSequences) {
    Fixture f;
    nq_context *ctx = f.ctx.get();
    Block blk = f.block();
    nq_block_info info;
    info.size = sizeof info;
    EXPECT_ERR(nq_block_get_info(nullptr, &info), NQ_ERR_INVALID_ARGUMENT, "blk");
    EXPECT_ERR(nq_block_get_info(blk.get(), nullptr), NQ_ERR_INVALID_ARGUMENT, "out");
    info.size = 0;
    EXPECT_ERR(nq_block_get_info(blk.get(), &info), NQ_ERR_INVALID_ARGUMENT, "nq_block_info.size");
    int64_t pos[4];
    EXPECT_ERR(nq_block_positions(nullptr, 0, 0, 1, pos), NQ_ERR_INVALID_ARGUMENT, "blk");
    EXPECT_ERR(nq_block_positions(blk.get(), Fixture::H, 0, 1, pos), NQ_ERR_OUT_OF_RANGE, "head");
    EXPECT_ERR(nq_block_positions(blk.get(), 0, 0, Fixture::T + 1, pos), NQ_ERR_OUT_OF_RANGE, "token range");
    EXPECT_ERR(nq_block_positions(blk.get(), 0, 0, 1, nullptr), NQ_ERR_INVALID_ARGUMENT, "dst");
    EXPECT_EQ(nq_block_positions(blk.get(), 0, 3, 3, nullptr), NQ_OK);
    const void *data;
    size_t n;
    EXPECT_ERR(nq_block_data(nullptr, &data, &n), NQ_ERR_INVALID_ARGUMENT, "blk");
    EXPECT_ERR(nq_block_data(blk.get(), nullptr, &n), NQ_ERR_INVALID_ARGUMENT, "data");
    uint64_t dg;
    EXPECT_ERR(nq_block_digest(nullptr, &dg), NQ_ERR_INVALID_ARGUMENT, "blk");
    EXPECT_ERR(nq_block_digest(blk.get(), nullptr), NQ_ERR_INVALID_ARGUMENT, "digest");
    EXPECT_ERR(nq_block_serialize_bound(nullptr, &n), NQ_ERR_INVALID_ARGUMENT, "blk");
    EXPECT_ERR(nq_block_serialize_bound(blk.get(), nullptr), NQ_ERR_INVALID_ARGUMENT, "bytes");
    std::vector<uint8_t> buf(4096);
    size_t w;
    EXPECT_ERR(nq_block_serialize(nullptr, blk.get(), buf.data(), buf.size(), &w), NQ_ERR_INVALID_ARGUMENT, "ctx");
    EXPECT_ERR(nq_block_serialize(ctx, nullptr, buf.data(), buf.size(), &w), NQ_ERR_INVALID_ARGUMENT, "blk");
    EXPECT_ERR(nq_block_serialize(ctx, blk.get(), nullptr, buf.size(), &w), NQ_ERR_INVALID_ARGUMENT, "dst");
    EXPECT_ERR(nq_block_serialize(ctx, blk.get(), buf.data(), buf.size(), nullptr), NQ_ERR_INVALID_ARGUMENT, "written");
    EXPECT_ERR(nq_block_serialize(ctx, blk.get(), buf.data(), 10, &w), NQ_ERR_BUFFER_TOO_SMALL, "capacity");
    nq_block *b = nullptr;
    EXPECT_ERR(nq_block_deserialize(nullptr, buf.data(), 10, &b), NQ_ERR_INVALID_ARGUMENT, "ctx");
    EXPECT_ERR(nq_block_deserialize(ctx, nullptr, 10, &b), NQ_ERR_INVALID_ARGUMENT, "src");
    EXPECT_ERR(nq_block_deserialize(ctx, buf.data(), 10, nullptr), NQ_ERR_INVALID_ARGUMENT, "out");
    // Copies (a CPU-only library has no device memory).
    EXPECT_ERR(nq_block_copy(ctx, blk.get(), NQ_MEMORY_CUDA, 0, nullptr, 0, nullptr, &b), NQ_ERR_BACKEND_UNAVAILABLE,
               "GPU");
    EXPECT_ERR(nq_block_copy(ctx, blk.get(), (nq_memory)7, 0, nullptr, 0, nullptr, &b), NQ_ERR_INVALID_ARGUMENT,
               "memory");
    EXPECT_ERR(nq_block_copy(ctx, blk.get(), NQ_MEMORY_HOST, 0, buf.data() + 1, buf.size() - 1, nullptr, &b),
               NQ_ERR_INVALID_ARGUMENT, "16-byte aligned");
    uint8_t *al = buf.data() + (16 - (uintptr_t)buf.data() % 16) % 16;
    EXPECT_ERR(nq_block_copy(ctx, blk.get(), NQ_MEMORY_HOST, 0, al, 64, nullptr, &b), NQ_ERR_BUFFER_TOO_SMALL,
               "buffer");
    EXPECT_ERR(nq_block_copy(nullptr, blk.get(), NQ_MEMORY_HOST, 0, nullptr, 0, nullptr, &b), NQ_ERR_INVALID_ARGUMENT,
               "ctx");
    EXPECT_ERR(nq_block_copy(ctx, nullptr, NQ_MEMORY_HOST, 0, nullptr, 0, nullptr, &b), NQ_ERR_INVALID_ARGUMENT, "src");
    ASSERT_EQ(nq_block_copy(ctx, blk.get(), NQ_MEMORY_HOST, 0, nullptr, 0, nullptr, &b), NQ_OK) << nq_last_error();
    EXPECT_EQ(digest_of(b), digest_of(blk.get()));
    nq_block_free(b);

    // Contexts.
    nq_config cfg;
    EXPECT_ERR(nq_context_get_config(nullptr, &cfg), NQ_ERR_INVALID_ARGUMENT, "ctx");
    EXPECT_ERR(nq_context_get_config(ctx, nullptr), NQ_ERR_INVALID_ARGUMENT, "out");
    nq_layer_params lp;
    lp.size = sizeof lp;
    EXPECT_ERR(nq_context_layer_params(nullptr, 0, &lp), NQ_ERR_INVALID_ARGUMENT, "ctx");
    EXPECT_ERR(nq_context_layer_params(ctx, 0, nullptr), NQ_ERR_INVALID_ARGUMENT, "out");
    nq_preset p;
    EXPECT_ERR(nq_preset_from_name(nullptr, &p), NQ_ERR_INVALID_ARGUMENT, "name");
    EXPECT_ERR(nq_preset_from_name("high", nullptr), NQ_ERR_INVALID_ARGUMENT, "out");
    EXPECT_ERR(nq_preset_from_name("ultra", &p), NQ_ERR_INVALID_ARGUMENT, "ultra");

    // Sequences.
    nq_sequence *s = nullptr;
    EXPECT_ERR(nq_sequence_create(nullptr, 0, &s), NQ_ERR_INVALID_ARGUMENT, "ctx");
    EXPECT_ERR(nq_sequence_create(ctx, 0, nullptr), NQ_ERR_INVALID_ARGUMENT, "out");
    ASSERT_EQ(nq_sequence_create(ctx, 0, &s), NQ_OK);
    Seq seq(s);
    EXPECT_ERR(nq_sequence_append(nullptr, &f.kv, nullptr, nullptr), NQ_ERR_INVALID_ARGUMENT, "seq");
    EXPECT_ERR(nq_sequence_append(s, nullptr, nullptr, nullptr), NQ_ERR_INVALID_ARGUMENT, "kv");
    nq_kv_desc broken = f.kv;
    broken.k = nullptr;
    EXPECT_ERR(nq_sequence_append(s, &broken, nullptr, nullptr), NQ_ERR_INVALID_ARGUMENT, "kv.k");
    EXPECT_EQ(nq_sequence_num_blocks(s), 0u);
    ASSERT_EQ(nq_sequence_append(s, &f.kv, nullptr, nullptr), NQ_OK);
    EXPECT_ERR(nq_sequence_append_block(nullptr, blk.get()), NQ_ERR_INVALID_ARGUMENT, "seq");
    EXPECT_ERR(nq_sequence_append_block(s, nullptr), NQ_ERR_INVALID_ARGUMENT, "blk");
    EXPECT_ERR(nq_sequence_append_block(s, blk.get()), NQ_ERR_INVALID_ARGUMENT, "position");  // overlaps: refused
    Ctx other = make_ctx(plain_config(1, Fixture::D));
    Tensor k1(NQ_DTYPE_F16, Layout::HTD, 1, 4, Fixture::D), v1(NQ_DTYPE_F16, Layout::HTD, 1, 4, Fixture::D);
    nq_kv_desc kv1 = kv_desc(k1, v1, 4);
    kv1.start_position = 1000;
    Block foreign = compress(other.get(), kv1);
    EXPECT_ERR(nq_sequence_append_block(s, foreign.get()), NQ_ERR_INVALID_ARGUMENT, "heads");
    Tensor ok(NQ_DTYPE_F16, Layout::HTD, Fixture::H, 4, Fixture::D),
        ov(NQ_DTYPE_F16, Layout::HTD, Fixture::H, 4, Fixture::D);
    nq_kv_desc out = kv_desc(ok, ov, 4);
    EXPECT_ERR(nq_sequence_decode(nullptr, 0, 4, &out, nullptr), NQ_ERR_INVALID_ARGUMENT, "seq");
    EXPECT_ERR(nq_sequence_decode(s, 0, 4, nullptr, nullptr), NQ_ERR_INVALID_ARGUMENT, "out");
    EXPECT_ERR(nq_sequence_decode(s, Fixture::T - 2, Fixture::T + 2, &out, nullptr), NQ_ERR_OUT_OF_RANGE,
               "token range");
    EXPECT_ERR(nq_sequence_decode(s, 0, 3, &out, nullptr), NQ_ERR_INVALID_ARGUMENT, "out.num_tokens");
    EXPECT_ERR(nq_sequence_positions(nullptr, 0, 0, 1, pos), NQ_ERR_INVALID_ARGUMENT, "seq");
    EXPECT_ERR(nq_sequence_positions(s, Fixture::H, 0, 1, pos), NQ_ERR_OUT_OF_RANGE, "head");
    EXPECT_ERR(nq_sequence_positions(s, 0, 0, Fixture::T + 1, pos), NQ_ERR_OUT_OF_RANGE, "token range");
    EXPECT_ERR(nq_sequence_positions(s, 0, 0, 1, nullptr), NQ_ERR_INVALID_ARGUMENT, "dst");
    EXPECT_ERR(nq_sequence_totals(nullptr, nullptr, nullptr, nullptr), NQ_ERR_INVALID_ARGUMENT, "seq");
    EXPECT_EQ(nq_sequence_totals(s, nullptr, nullptr, nullptr), NQ_OK);
}

// Each thread sees its own last error while others fail differently at the same time.
TEST(Errors, LastErrorIsPerThread) {
    Fixture f;
    std::atomic<int> ready{0}, failures{0};
    const int kThreads = 8;
    std::vector<std::thread> th;
    for (int i = 0; i < kThreads; ++i)
        th.emplace_back([&, i] {
            ++ready;
            while (ready.load() < kThreads) std::this_thread::yield();
            for (int rep = 0; rep < 2000; ++rep) {
                std::string want;
                nq_status st = NQ_OK;
                switch (i) {
                    case 0: {
                        nq_preset p;
                        st = nq_preset_from_name("thread-zero", &p);
                        want = "thread-zero";
                        break;
                    }
                    case 1: {
                        nq_config c;
                        nq_config_init(&c);
                        c.head_dim = 13;
                        nq_context *x = nullptr;
                        st = nq_context_create(&c, &x);
                        want = "config.head_dim is 13";
                        break;
                    }
                    case 2: {
                        nq_kv_desc kv = f.kv;
                        kv.start_position = -2;
                        nq_block *b = nullptr;
                        st = nq_compress_kv(f.ctx.get(), &kv, nullptr, nullptr, &b);
                        want = "kv.start_position is -2";
                        break;
                    }
                    case 3: {
                        size_t n;
                        st = nq_block_serialize_bound(nullptr, &n);
                        want = "blk is NULL";
                        break;
                    }
                    case 4: {
                        uint8_t junk[200] = {0};
                        nq_block *b = nullptr;
                        st = nq_block_deserialize(f.ctx.get(), junk, sizeof junk, &b);
                        want = "not a nexusquant archive";
                        break;
                    }
                    case 5: {
                        uint64_t e;
                        st = nq_estimate_bytes(f.ctx.get(), 2, 0, &e);
                        want = "tokens is 0";
                        break;
                    }
                    case 6: {
                        nq_kv_desc kv = f.kv;
                        kv.dtype = (nq_dtype)77;
                        nq_block *b = nullptr;
                        st = nq_compress_kv(f.ctx.get(), &kv, nullptr, nullptr, &b);
                        want = "kv.dtype is 77";
                        break;
                    }
                    default: {
                        int64_t p;
                        nq_block *b = nullptr;
                        if (nq_compress_kv(f.ctx.get(), &f.kv, nullptr, nullptr, &b) != NQ_OK) {
                            ++failures;
                            return;
                        }
                        st = nq_block_positions(b, 99, 0, 1, &p);
                        nq_block_free(b);
                        want = "head 99";
                        break;
                    }
                }
                if (st == NQ_OK || std::string(nq_last_error()).find(want) == std::string::npos) {
                    ++failures;
                    return;
                }
            }
        });
    for (auto &t : th) t.join();
    EXPECT_EQ(failures.load(), 0);
}

// Failure injection: the k-th allocation fails, for every k until a whole workflow
// succeeds. Every step reports NQ_ERR_OUT_OF_MEMORY (or succeeds), and after freeing
// everything the allocator holds nothing.
TEST(Errors, AllocationFailuresAreReportedAndLeakNothing) {
    const uint32_t H = 2, T = 40, D = 16;
    Tensor k(NQ_DTYPE_F16, Layout::PagedNHD, H, T, D, 8), v(NQ_DTYPE_F16, Layout::HTD, H, T, D);
    Values K = random_values(H, T, D), V = random_values(H, T, D);
    store(k, K);
    store(v, V);
    const nq_kv_desc kv = kv_desc(k, v, T);
    nq_layer_override ov[1] = {{1, 2, 4, 4, -1.0f, 0}};
    auto run = [&](CountingAllocator &a, long fail) -> bool {
        nq_config c;
        nq_config_init(&c);
        c.num_kv_heads = H;
        c.head_dim = D;
        c.preset = NQ_PRESET_HIGH;
        c.allocator = a.get();
        c.overrides = ov;
        c.num_overrides = 1;
        nq_context *ctx = nullptr;
        auto expect_oom = [&](nq_status st, const char *what) {
            EXPECT_TRUE(st == NQ_OK || st == NQ_ERR_OUT_OF_MEMORY)
                << what << " at failure " << fail << ": " << nq_status_string(st) << " " << nq_last_error();
            return st == NQ_OK;
        };
        if (!expect_oom(nq_context_create(&c, &ctx), "context")) return false;
        Ctx holder(ctx);
        size_t bound;
        if (!expect_oom(nq_compress_bound(ctx, &kv, &bound), "bound")) return false;
        nq_block *b = nullptr;
        if (!expect_oom(nq_compress_kv(ctx, &kv, nullptr, nullptr, &b), "compress")) return false;
        Block blk(b);
        std::vector<uint8_t> arch(65536);
        size_t w = 0;
        if (!expect_oom(nq_block_serialize(ctx, b, arch.data(), arch.size(), &w), "serialize")) return false;
        nq_block *back = nullptr;
        if (!expect_oom(nq_block_deserialize(ctx, arch.data(), w, &back), "deserialize")) return false;
        Block bb(back);
        EXPECT_EQ(digest_of(back), digest_of(b));
        nq_block *copy = nullptr;
        if (!expect_oom(nq_block_copy(ctx, b, NQ_MEMORY_HOST, 0, nullptr, 0, nullptr, &copy), "copy")) return false;
        Block cb(copy);
        nq_sequence *s = nullptr;
        if (!expect_oom(nq_sequence_create(ctx, 1, &s), "sequence")) return false;
        Seq seq(s);
        for (int i = 0; i < 10; ++i) {  // enough appends to grow the block list
            nq_kv_desc part = kv;
            part.start_position = 100 * i;
            if (!expect_oom(nq_sequence_append(s, &part, nullptr, nullptr), "append")) return false;
        }
        nq_kv_desc items[3] = {kv, kv, kv};
        nq_block *out[3] = {nullptr, nullptr, nullptr};
        nq_status st = nq_compress_batch(ctx, items, nullptr, 3, nullptr, nullptr, 0, nullptr, out, nullptr);
        for (nq_block *o : out) nq_block_free(o);
        if (!expect_oom(st, "batch")) return false;
        uint64_t est;
        if (!expect_oom(nq_estimate_bytes(ctx, 3, T, &est), "estimate")) return false;
        return true;
    };
    CountingAllocator all;
    ASSERT_TRUE(run(all, -1));
    const long total = all.allocs;
    EXPECT_EQ(all.live_count(), 0u);
    EXPECT_GT(total, 20) << "the workflow should need many allocations";
    long refused = 0;
    for (long fail = 0; fail < total; ++fail)
        for (bool all_after : {false, true}) {
            CountingAllocator a;
            a.fail_at = fail;
            a.fail_all_after = all_after;
            refused += !run(a, fail);
            EXPECT_EQ(a.live_count(), 0u) << "leak after failure " << fail << (all_after ? " (all after)" : "");
            EXPECT_EQ(a.bad_frees, 0);
            EXPECT_EQ(a.bad_requests, 0);
        }
    // Most failures surface as NQ_ERR_OUT_OF_MEMORY (zstd's own scratch comes from
    // malloc, not from this allocator).
    EXPECT_GT(refused, total);
}
