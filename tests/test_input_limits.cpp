// Values and numbers at the edges of what the API accepts: non-finite values in tokens
// kept as fp16, positions near INT64_MAX, strides whose byte offsets overflow, struct
// sizes no version of a struct has, and non-zero reserved fields. Each is refused with
// a status and a message naming the field; none reaches undefined behaviour (the
// sanitizer build of .ci/sanitizers.sh runs these).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "api_harness.h"

using namespace nqt;

#define EXPECT_REFUSED(call, status, substr)                                                      \
    do {                                                                                          \
        nq_status st_ = (call);                                                                   \
        EXPECT_EQ(st_, status) << #call << ": " << nq_last_error();                               \
        EXPECT_NE(std::string(nq_last_error()).find(substr), std::string::npos)                   \
            << #call << ": message '" << nq_last_error() << "' does not name '" << substr << "'"; \
    } while (0)

namespace {

constexpr uint32_t H = 2, T = 40, D = 16;

// fp16 sinks (positions 0..3) and an 8-token fp16 window; no eviction.
nq_config fp16_rows_config(nq_cpu_isa isa) {
    nq_config c = plain_config(H, D);
    c.sink_tokens = 4;
    c.fp16_sinks = 4;
    c.recent_window = 8;
    c.fp16_window = 8;
    c.cpu_isa = isa;
    return c;
}

}  // namespace

// NaN and +-inf anywhere in K or V are refused with one status and one message shape,
// whether the token is kept as fp16 (a sink, the window) or quantised, for every input
// dtype and on the scalar and the SIMD paths. A finite f32/bf16 value beyond fp16's
// range in a token kept as fp16 would decode as inf: refused too.
TEST(InputLimits, NonFiniteValuesInEveryKindOfTokenAreRefused) {
    const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
    struct Where {
        uint32_t token;
        const char *kind;
    };
    const Where where[] = {{1, "fp16"}, {T - 2, "fp16"}, {20, "quantise"}};
    for (nq_cpu_isa isa : {NQ_ISA_SCALAR, NQ_ISA_AUTO}) {
        Ctx ctx = make_ctx(fp16_rows_config(isa));
        for (nq_dtype dt : {NQ_DTYPE_F32, NQ_DTYPE_F16, NQ_DTYPE_BF16})
            for (const Where &w : where)
                for (double bad : {nan, inf, -inf, 1e6})
                    for (int which_v = 0; which_v < 2; ++which_v) {
                        if (bad == 1e6 && (dt == NQ_DTYPE_F16 || w.token == 20)) continue;  // representable there
                        SCOPED_TRACE(std::string(dtype_label(dt)) + " token " + std::to_string(w.token) + " value " +
                                     std::to_string(bad) + (which_v ? " in V" : " in K"));
                        Tensor k(dt, Layout::HTD, H, T, D), v(dt, Layout::THD, H, T, D);
                        Values K = random_values(H, T, D), V = random_values(H, T, D);
                        store(k, K);
                        store(v, V);
                        Tensor &t = which_v ? v : k;
                        if (dt == NQ_DTYPE_F16 && std::isnan(bad)) {  // the harness rounds finite values only
                            const uint16_t bits = 0x7e00;
                            std::memcpy(static_cast<uint8_t *>(t.base()) + t.offset(1, w.token, 5) * 2, &bits, 2);
                        } else {
                            t.set(1, w.token, 5, bad);
                        }
                        nq_kv_desc kv = kv_desc(k, v, T);
                        nq_block *b = nullptr;
                        const std::string want = std::string(which_v ? "kv.v" : "kv.k") + ": head 1 token " +
                                                 std::to_string(w.token) + " holds inf/nan";
                        EXPECT_REFUSED(nq_compress_kv(ctx.get(), &kv, nullptr, nullptr, &b), NQ_ERR_INVALID_ARGUMENT,
                                       want);
                        EXPECT_NE(std::string(nq_last_error()).find(w.kind), std::string::npos) << nq_last_error();
                        EXPECT_EQ(b, nullptr);
                    }
        // The largest finite fp16 value is kept, bit for bit.
        Tensor k(NQ_DTYPE_F32, Layout::HTD, H, T, D), v(NQ_DTYPE_F32, Layout::HTD, H, T, D);
        Values K = random_values(H, T, D), V = random_values(H, T, D);
        store(k, K);
        store(v, V);
        k.set(0, 1, 3, -65504.0);
        nq_kv_desc kv = kv_desc(k, v, T);
        Block b = compress(ctx.get(), kv);
        ASSERT_TRUE(b);
        Decoded d = decode_f32(ctx.get(), b.get(), H, D, 0, T);
        EXPECT_EQ(d.k.at(0, 1, 3), -65504.0);
    }
}

// start_position near INT64_MAX: refused without forming start + num_tokens (UBSan
// reported a signed overflow there). The last accepted start is 2^32 - num_tokens.
TEST(InputLimits, StartPositionNearInt64MaxIsRefused) {
    Ctx ctx = make_ctx(plain_config(H, D));
    Tensor k(NQ_DTYPE_F16, Layout::HTD, H, T, D), v(NQ_DTYPE_F16, Layout::HTD, H, T, D);
    Values K = random_values(H, T, D), V = random_values(H, T, D);
    store(k, K);
    store(v, V);
    nq_kv_desc kv = kv_desc(k, v, T);
    size_t bytes = 0;
    nq_block *b = nullptr;
    for (int64_t start : {INT64_MAX - 5, INT64_MAX, INT64_MAX - (int64_t)T + 1, ((int64_t)1 << 32) - (int64_t)T + 1,
                          INT64_MIN, (int64_t)-1}) {
        kv.start_position = start;
        EXPECT_REFUSED(nq_compress_kv(ctx.get(), &kv, nullptr, nullptr, &b), NQ_ERR_INVALID_ARGUMENT, "start_position");
        EXPECT_EQ(b, nullptr);
        EXPECT_REFUSED(nq_compress_bound(ctx.get(), &kv, &bytes), NQ_ERR_INVALID_ARGUMENT, "start_position");
    }
    kv.start_position = ((int64_t)1 << 32) - T;  // last position 2^32 - 1
    Block ok = compress(ctx.get(), kv);
    ASSERT_TRUE(ok);
    EXPECT_EQ(info_of(ok.get()).last_position, ((int64_t)1 << 32) - 1);

    nq_sequence *s = nullptr;
    ASSERT_EQ(nq_sequence_create(ctx.get(), 0, &s), NQ_OK);
    Seq seq(s);
    kv.start_position = INT64_MAX - 5;
    EXPECT_REFUSED(nq_sequence_append(s, &kv, nullptr, nullptr), NQ_ERR_INVALID_ARGUMENT, "start_position");
}

// Strides whose element offsets fit in int64 but whose byte offsets do not (head 1 read
// head 0's memory after the product wrapped), and INT64_MIN, which has no absolute
// value: refused for strided and paged K/V, decode outputs, given scores and queries.
TEST(InputLimits, StridesWhoseByteOffsetsOverflowAreRefused) {
    nq_config c = plain_config(H, D);
    Ctx ctx = make_ctx(c);
    c.evict_fraction = 0.5f;
    Ctx evicting = make_ctx(c);
    std::vector<float> k((size_t)H * T * D, 0.5f), v((size_t)H * T * D, 0.25f);
    nq_kv_desc base;
    nq_kv_desc_init(&base);
    base.dtype = NQ_DTYPE_F32;
    base.num_tokens = T;
    base.k = k.data();
    base.v = v.data();
    nq_layout_contiguous(&base.k_layout, T, D);
    nq_layout_contiguous(&base.v_layout, T, D);
    const int64_t huge[] = {(int64_t)1 << 62, INT64_MAX / 2, INT64_MAX / 4 + 1, INT64_MIN, INT64_MIN + 1};
    for (int64_t s : huge) {
        SCOPED_TRACE(std::to_string(s));
        nq_block *b = nullptr;
        nq_kv_desc kv = base;
        kv.k_layout.stride_head = s;
        EXPECT_REFUSED(nq_compress_kv(ctx.get(), &kv, nullptr, nullptr, &b), NQ_ERR_INVALID_ARGUMENT, "kv.k_layout");
        kv = base;
        kv.v_layout.stride_token = s;
        EXPECT_REFUSED(nq_compress_kv(ctx.get(), &kv, nullptr, nullptr, &b), NQ_ERR_INVALID_ARGUMENT, "kv.v_layout");
        kv = base;
        kv.k_layout.stride_dim = s;
        EXPECT_REFUSED(nq_compress_kv(ctx.get(), &kv, nullptr, nullptr, &b), NQ_ERR_INVALID_ARGUMENT, "kv.k_layout");

        // paged: a page stride that overflows in bytes
        int32_t table[5] = {0, 1, 2, 3, 4};
        kv = base;
        kv.k_layout.kind = NQ_LAYOUT_PAGED;
        kv.k_layout.page_size = 8;
        kv.k_layout.page_table = table;
        kv.k_layout.num_pages = 5;
        kv.k_layout.stride_token = H * D;
        kv.k_layout.stride_head = D;
        kv.k_layout.stride_page = s;
        EXPECT_REFUSED(nq_compress_kv(ctx.get(), &kv, nullptr, nullptr, &b), NQ_ERR_INVALID_ARGUMENT, "kv.k_layout");
        EXPECT_EQ(b, nullptr);

        // decode output
        Block blk = compress(ctx.get(), base);
        ASSERT_TRUE(blk);
        kv = base;
        kv.v_layout.stride_head = s;
        EXPECT_REFUSED(nq_decode_block(ctx.get(), blk.get(), 0, T, &kv, nullptr), NQ_ERR_INVALID_ARGUMENT,
                       "out.v_layout");

        // scores
        std::vector<float> scores((size_t)H * T, 1.0f);
        nq_score_desc sc;
        nq_score_desc_init(&sc);
        sc.kind = NQ_SCORES_GIVEN;
        sc.scores = scores.data();
        sc.score_stride_head = s;
        sc.score_stride_token = 1;
        EXPECT_REFUSED(nq_compress_kv(evicting.get(), &base, &sc, nullptr, &b), NQ_ERR_INVALID_ARGUMENT,
                       "score_stride");
        std::vector<float> q((size_t)H * 4 * D, 0.1f);
        nq_score_desc_init(&sc);
        sc.kind = NQ_SCORES_QUERIES;
        sc.queries = q.data();
        sc.query_dtype = NQ_DTYPE_F32;
        sc.num_queries = 4;
        sc.q_stride_head = s;
        sc.q_stride_token = D;
        EXPECT_REFUSED(nq_compress_kv(evicting.get(), &base, &sc, nullptr, &b), NQ_ERR_INVALID_ARGUMENT, "q_stride");
        EXPECT_EQ(b, nullptr);
    }
    // The largest head stride whose byte offsets fit still passes validation (the
    // memory is not there, so only the sizes are asked).
    nq_kv_desc kv = base;
    kv.k_layout.stride_head = INT64_MAX / 4 - (int64_t)T * D;
    size_t bytes = 0;
    EXPECT_EQ(nq_compress_bound(ctx.get(), &kv, &bytes), NQ_OK) << nq_last_error();
}

// A size no version of a struct has: a `size` left uninitialised (1 MiB read past the
// caller's struct before), too small to hold the fields without defaults, or cut
// inside a field. Refused before any byte past `size` is read, with the function to
// call named.
TEST(InputLimits, StructSizesNoVersionHasAreRefused) {
    nq_config cfg = plain_config(H, D);
    nq_context *ctx = nullptr;
    const size_t bad_cfg[] = {(size_t)1 << 20, 4097 * 8, 8, 12, offsetof(nq_config, num_kv_heads),
                              offsetof(nq_config, rope) + 4, offsetof(nq_config, rope.theta),
                              sizeof(nq_config) + 4, sizeof(nq_config) - 1};
    for (size_t n : bad_cfg) {
        cfg.size = n;  // the struct is sizeof(nq_config): any read past it is an ASan error
        EXPECT_REFUSED(nq_context_create(&cfg, &ctx), NQ_ERR_INVALID_ARGUMENT, "call nq_config_init");
        EXPECT_EQ(ctx, nullptr) << n;
    }
    for (size_t n : {offsetof(nq_config, num_q_heads), offsetof(nq_config, rope), offsetof(nq_config, backend),
                     sizeof(nq_config)}) {
        cfg.size = n;
        EXPECT_EQ(nq_context_create(&cfg, &ctx), NQ_OK) << n << ": " << nq_last_error();
        nq_context_free(ctx);
        ctx = nullptr;
    }
    cfg.size = sizeof cfg;
    Ctx c = make_ctx(cfg);

    Tensor k(NQ_DTYPE_F16, Layout::HTD, H, T, D), v(NQ_DTYPE_F16, Layout::HTD, H, T, D);
    Values K = random_values(H, T, D), V = random_values(H, T, D);
    store(k, K);
    store(v, V);
    nq_kv_desc kv = kv_desc(k, v, T);
    nq_block *b = nullptr;
    for (size_t n : {(size_t)1 << 20, (size_t)8, offsetof(nq_kv_desc, k), offsetof(nq_kv_desc, start_position) + 4}) {
        kv.size = n;
        EXPECT_REFUSED(nq_compress_kv(c.get(), &kv, nullptr, nullptr, &b), NQ_ERR_INVALID_ARGUMENT,
                       "call nq_kv_desc_init");
        EXPECT_REFUSED(nq_compress_batch(c.get(), &kv, nullptr, 1, nullptr, nullptr, 0, nullptr, &b, nullptr),
                       NQ_ERR_INVALID_ARGUMENT, "nq_kv_desc_init");
    }
    kv.size = sizeof kv;
    Block blk = compress(c.get(), kv);
    ASSERT_TRUE(blk);

    nq_config evict_cfg = cfg;
    evict_cfg.evict_fraction = 0.5f;
    Ctx ev = make_ctx(evict_cfg);
    nq_score_desc sc;
    nq_score_desc_init(&sc);
    for (size_t n : {(size_t)1 << 20, (size_t)8, offsetof(nq_score_desc, scores) + 4}) {
        sc.size = n;
        EXPECT_REFUSED(nq_compress_kv(ev.get(), &kv, &sc, nullptr, &b), NQ_ERR_INVALID_ARGUMENT,
                       "call nq_score_desc_init");
    }

    // Output structs: a garbage size is refused too (nothing is written).
    nq_block_info info;
    std::memset(&info, 0x5A, sizeof info);
    for (size_t n : {(size_t)1 << 20, offsetof(nq_block_info, ratio) + 4, (size_t)0}) {
        info.size = n;
        EXPECT_REFUSED(nq_block_get_info(blk.get(), &info), NQ_ERR_INVALID_ARGUMENT, "sizeof(nq_block_info)");
        EXPECT_EQ(info.layer, 0x5A5A5A5Au);
    }
    nq_layer_params lp;
    lp.size = offsetof(nq_layer_params, evict_fraction) + 2;
    EXPECT_REFUSED(nq_context_layer_params(c.get(), 0, &lp), NQ_ERR_INVALID_ARGUMENT, "nq_layer_params");
    nq_config got;
    got.size = (size_t)1 << 20;
    EXPECT_REFUSED(nq_context_get_config(c.get(), &got), NQ_ERR_INVALID_ARGUMENT, "nq_config");
}

// Reserved fields must be zero, so that a later version can give them a meaning.
TEST(InputLimits, NonZeroReservedFieldsAreRefused) {
    nq_config cfg = plain_config(H, D);
    nq_context *ctx = nullptr;
    cfg.rope.reserved0 = 1;
    EXPECT_REFUSED(nq_context_create(&cfg, &ctx), NQ_ERR_UNSUPPORTED, "config.rope.reserved0");
    cfg.rope.reserved0 = 0;
    nq_layer_override ov[2] = {{0, 2, 4, 4, -1.0f, 0}, {2, 4, 4, 4, -1.0f, 7}};
    cfg.overrides = ov;
    cfg.num_overrides = 2;
    EXPECT_REFUSED(nq_context_create(&cfg, &ctx), NQ_ERR_UNSUPPORTED, "config.overrides[1].reserved0");
    EXPECT_EQ(ctx, nullptr);
    cfg.num_overrides = 1;
    Ctx c = make_ctx(cfg);
    cfg.num_overrides = 0;
    cfg.evict_fraction = 0.5f;
    Ctx ev = make_ctx(cfg);

    Tensor k(NQ_DTYPE_F16, Layout::HTD, H, T, D), v(NQ_DTYPE_F16, Layout::HTD, H, T, D);
    Values K = random_values(H, T, D), V = random_values(H, T, D);
    store(k, K);
    store(v, V);
    nq_kv_desc kv = kv_desc(k, v, T);
    nq_block *b = nullptr;
    kv.k_layout.reserved0 = 1;
    EXPECT_REFUSED(nq_compress_kv(c.get(), &kv, nullptr, nullptr, &b), NQ_ERR_UNSUPPORTED, "kv.k_layout.reserved0");
    kv.k_layout.reserved0 = 0;
    Block blk = compress(c.get(), kv);
    ASSERT_TRUE(blk);
    kv.v_layout.reserved0 = 2;
    EXPECT_REFUSED(nq_decode_block(c.get(), blk.get(), 0, T, &kv, nullptr), NQ_ERR_UNSUPPORTED,
                   "out.v_layout.reserved0");
    kv.v_layout.reserved0 = 0;
    nq_score_desc sc;
    nq_score_desc_init(&sc);
    sc.reserved0 = 3;
    EXPECT_REFUSED(nq_compress_kv(ev.get(), &kv, &sc, nullptr, &b), NQ_ERR_UNSUPPORTED, "scores.reserved0");
    EXPECT_EQ(b, nullptr);
}
