// Every instruction set of the CPU backend, at every thread count, must write the
// scalar reference's bytes: resident blocks (nq_block_data) and decoded K/V.
//
// The suite runs once per instruction set the machine has (the others skip). Inputs are
// random; the seed is printed and NQ_TEST_SEED=<seed> repeats a run.
#include <gtest/gtest.h>

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "../../backends/cpu/cpu_dispatch.h"
#include "../../backends/cpu/isa/kernels.h"
#include "../../src/core/half.h"
#include "../../src/core/rope.h"
#include "nexusquant.h"

namespace {

uint64_t test_seed() {
    static const uint64_t seed = [] {
        const char *e = std::getenv("NQ_TEST_SEED");
        uint64_t s = e ? std::strtoull(e, nullptr, 10) : ((uint64_t)std::random_device{}() << 32) ^ std::random_device{}();
        std::printf("[isa] seed %" PRIu64 " (NQ_TEST_SEED=%" PRIu64 " repeats this run)\n", s, s);
        return s;
    }();
    return seed;
}

const char *isa_name(nq_cpu_isa isa) {
    switch (isa) {
    case NQ_ISA_AVX512: return "avx512";
    case NQ_ISA_AVX2: return "avx2";
    default: return "scalar";
    }
}

enum Layout { kHeadMajor, kTokenMajor, kDimStrided, kPaged, kNumLayouts };

struct Case {
    uint32_t heads = 2, head_dim = 128, tokens = 64;
    nq_codec codec = NQ_CODEC_E8;
    uint32_t k_bits = 3, v_bits = 2;
    nq_dtype dtype = NQ_DTYPE_F16, out_dtype = NQ_DTYPE_F16;
    nq_rope_mode rope = NQ_ROPE_REMOVE;
    nq_rope_pairing pairing = NQ_ROPE_SPLIT_HALF;
    nq_rope_scaling scaling = NQ_ROPE_SCALING_NONE;
    uint32_t rotary_dims = 0;
    float evict = 0.0f;
    nq_evict_mode evict_mode = NQ_EVICT_PER_HEAD;
    Layout layout = kHeadMajor;
    uint32_t threads = 1;
    int64_t start_position = 0;
    int specials = 0;  // fp16 patterns in the raw (sink/window) rows: 1 NaN/inf too, 2 finite only

    std::string str() const {
        char b[512];
        std::snprintf(b, sizeof b,
                      "H=%u D=%u T=%u codec=%d k=%u v=%u dtype=%d out=%d rope=%d pairing=%d scaling=%d rot=%u "
                      "evict=%.2f mode=%d layout=%d threads=%u start=%" PRId64 " specials=%d seed=%" PRIu64,
                      heads, head_dim, tokens, (int)codec, k_bits, v_bits, (int)dtype, (int)out_dtype, (int)rope,
                      (int)pairing, (int)scaling, rotary_dims, (double)evict, (int)evict_mode, (int)layout, threads,
                      start_position, (int)specials, test_seed());
        return b;
    }
};

uint32_t dtype_size(nq_dtype t) { return t == NQ_DTYPE_F32 ? 4 : 2; }

// K or V memory of one case in one of the layouts, with a page table when paged.
struct Tensor {
    std::vector<uint8_t> bytes;
    nq_layout layout{};
    std::vector<int32_t> pages;
};

void make_layout(const Case &c, uint32_t tokens, Tensor &t, std::mt19937_64 &rng) {
    const uint32_t H = c.heads, D = c.head_dim, T = tokens;
    nq_layout &l = t.layout;
    std::memset(&l, 0, sizeof l);
    l.kind = NQ_LAYOUT_STRIDED;
    size_t elems = 0;
    switch (c.layout) {
    case kHeadMajor:
        l.stride_head = (int64_t)T * D, l.stride_token = D, l.stride_dim = 1;
        elems = (size_t)H * T * D;
        break;
    case kTokenMajor:
        l.stride_token = (int64_t)H * D, l.stride_head = D, l.stride_dim = 1;
        elems = (size_t)H * T * D;
        break;
    case kDimStrided:  // every other element belongs to someone else
        l.stride_dim = 2, l.stride_token = (int64_t)2 * D, l.stride_head = (int64_t)2 * D * T;
        elems = (size_t)2 * H * T * D;
        break;
    default: {  // paged NHD with shuffled pages
        const uint32_t ps = 16, np = (T + ps - 1) / ps + 2;
        l.kind = NQ_LAYOUT_PAGED;
        l.page_size = ps;
        l.stride_token = (int64_t)H * D, l.stride_head = D, l.stride_dim = 1, l.stride_page = (int64_t)ps * H * D;
        l.num_pages = np;
        std::vector<int32_t> order(np);
        for (uint32_t i = 0; i < np; ++i) order[i] = (int32_t)i;
        std::shuffle(order.begin(), order.end(), rng);
        t.pages.assign(order.begin(), order.begin() + (T + ps - 1) / ps);
        l.page_table = t.pages.data();
        elems = (size_t)np * ps * H * D;
        break;
    }
    }
    t.bytes.assign(elems * dtype_size(c.dtype) + 64, 0);
}

int64_t elem_offset(const nq_layout &l, uint32_t h, uint32_t t, uint32_t d) {
    const int64_t sd = l.stride_dim ? l.stride_dim : 1;
    if (l.kind == NQ_LAYOUT_PAGED)
        return (int64_t)l.page_table[t / l.page_size] * l.stride_page + (int64_t)(t % l.page_size) * l.stride_token +
               (int64_t)h * l.stride_head + (int64_t)d * sd;
    return (int64_t)h * l.stride_head + (int64_t)t * l.stride_token + (int64_t)d * sd;
}

void put(Tensor &t, nq_dtype dt, uint32_t h, uint32_t tok, uint32_t d, float v) {
    uint8_t *p = t.bytes.data() + elem_offset(t.layout, h, tok, d) * dtype_size(dt);
    if (dt == NQ_DTYPE_F32) {
        std::memcpy(p, &v, 4);
    } else {
        const uint16_t b = dt == NQ_DTYPE_F16 ? nq::f32_to_f16(v) : nq::f32_to_bf16(v);
        std::memcpy(p, &b, 2);
    }
}

void put_bits16(Tensor &t, nq_dtype dt, uint32_t h, uint32_t tok, uint32_t d, uint16_t bits) {
    uint8_t *p = t.bytes.data() + elem_offset(t.layout, h, tok, d) * dtype_size(dt);
    if (dt == NQ_DTYPE_F32) {
        const float f = nq::f16_to_f32(bits);
        std::memcpy(p, &f, 4);
    } else {
        std::memcpy(p, &bits, 2);
    }
}

struct Inputs {
    Tensor k, v;
    nq_kv_desc kv;
};

void make_inputs(const Case &c, std::mt19937_64 &rng, Inputs &in) {
    make_layout(c, c.tokens, in.k, rng);
    make_layout(c, c.tokens, in.v, rng);
    std::normal_distribution<float> n(0.0f, 1.0f);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::vector<float> chan(c.head_dim);
    for (auto &s : chan) s = u(rng) < 0.05f ? 20.0f * u(rng) + 4.0f : 0.5f + u(rng);  // outlier channels
    const float big = c.dtype == NQ_DTYPE_F16 ? 600.0f : 1e6f;
    for (uint32_t h = 0; h < c.heads; ++h)
        for (uint32_t t = 0; t < c.tokens; ++t) {
            // Tokens kept as fp16 (the presets' 4 sinks and 32-token window) hold values
            // within fp16's range: larger ones are refused there (NonFiniteInputFailsTheSame).
            const bool raw_row = t < 4 || t + 32 >= c.tokens;
            const float huge = raw_row ? 600.0f : big;
            const float row_scale = u(rng) < 0.02f ? (u(rng) < 0.5f ? 1e-6f : huge) : 1.0f;  // tiny and huge rows
            for (uint32_t d = 0; d < c.head_dim; ++d) {
                put(in.k, c.dtype, h, t, d, n(rng) * chan[d] * row_scale);
                float vv = n(rng) * row_scale;
                if (u(rng) < 0.01f) vv = 0.0f;
                put(in.v, c.dtype, h, t, d, vv);
            }
            if (u(rng) < 0.02f)  // an all-zero vector (zero scale)
                for (uint32_t d = 0; d < c.head_dim; ++d) put(in.v, c.dtype, h, t, d, 0.0f);
        }
    if (c.specials) {
        // NaN/inf and subnormal/extreme finite fp16 patterns; the finite set holds no
        // pattern that is beyond fp16's range as a bf16 either.
        static const uint16_t all[] = {0x7c01, 0xfc55, 0x7e00, 0x7d23, 0x7c00, 0xfc00, 0x0001, 0x83ff, 0x8000, 0x7bff};
        static const uint16_t finite[] = {0x0001, 0x83ff, 0x8000, 0x03ff, 0x0400, 0x3c00, 0xb800, 0x1234, 0x8001, 0x0000};
        const uint16_t *sp = c.specials == 1 ? all : finite;
        const uint32_t rows[] = {0, 1, c.tokens - 1, c.tokens - 2};
        for (uint32_t r : rows)
            for (uint32_t h = 0; h < c.heads; ++h)
                for (uint32_t d = 0; d < c.head_dim; ++d) {
                    put_bits16(in.k, c.dtype, h, r, d, sp[(d + h) % 10]);
                    put_bits16(in.v, c.dtype, h, r, d, sp[(d * 7 + r) % 10]);
                }
    }
    nq_kv_desc_init(&in.kv);
    in.kv.dtype = c.dtype;
    in.kv.num_tokens = c.tokens;
    in.kv.k = in.k.bytes.data();
    in.kv.v = in.v.bytes.data();
    in.kv.k_layout = in.k.layout;
    in.kv.v_layout = in.v.layout;
    in.kv.start_position = c.start_position;
}

nq_context *make_context(const Case &c, nq_cpu_isa isa, uint32_t threads) {
    nq_config cfg;
    nq_config_init(&cfg);
    cfg.head_dim = c.head_dim;
    cfg.num_kv_heads = c.heads;
    cfg.preset = NQ_PRESET_LOSSLESS;
    cfg.codec = c.codec;
    cfg.k_bits = c.k_bits;
    cfg.v_bits = c.v_bits;
    cfg.evict_fraction = c.evict;
    cfg.evict_mode = c.evict_mode;
    cfg.rope.mode = c.rope;
    cfg.rope.pairing = c.pairing;
    cfg.rope.rotary_dims = c.rotary_dims;
    cfg.rope.theta = 10000.0 + 490000.0 * (c.head_dim % 3);  // 10k or 500k
    cfg.rope.scaling = c.scaling;
    switch (c.scaling) {
    case NQ_ROPE_SCALING_LINEAR: cfg.rope.factor = 2.0; break;
    case NQ_ROPE_SCALING_DYNAMIC_NTK:
        cfg.rope.factor = 2.0;
        cfg.rope.original_max_position = 64;
        break;
    case NQ_ROPE_SCALING_LLAMA3:
        cfg.rope.factor = 8.0;
        cfg.rope.original_max_position = 8192;
        break;
    case NQ_ROPE_SCALING_YARN:  // mscale = 0.1 ln 4 + 1: tables multiplied and divided
        cfg.rope.factor = 4.0;
        cfg.rope.original_max_position = 4096;
        break;
    default: break;
    }
    cfg.cpu_isa = isa;
    cfg.num_threads = threads;
    nq_context *ctx = nullptr;
    if (nq_context_create(&cfg, &ctx) != NQ_OK) {
        ADD_FAILURE() << "nq_context_create: " << nq_last_error() << " | " << c.str();
        return nullptr;
    }
    return ctx;
}

struct Encoded {
    nq_status status = NQ_OK;
    std::string message;
    std::vector<uint8_t> bytes;
    nq_block *blk = nullptr;
};

void compress(nq_context *ctx, const Inputs &in, Encoded &e) {
    e.status = nq_compress_kv(ctx, &in.kv, nullptr, nullptr, &e.blk);
    if (e.status != NQ_OK) {
        e.message = nq_last_error();
        return;
    }
    const void *data = nullptr;
    size_t n = 0;
    ASSERT_EQ(nq_block_data(e.blk, &data, &n), NQ_OK);
    e.bytes.assign(static_cast<const uint8_t *>(data), static_cast<const uint8_t *>(data) + n);
}

// Decodes [begin, end) into a fresh output (pre-filled with a pattern, so bytes the
// decoder must not touch are compared too).
std::vector<uint8_t> decode(nq_context *ctx, const nq_block *blk, const Case &c, uint32_t begin, uint32_t end,
                            std::mt19937_64 rng) {
    Case oc = c;
    oc.dtype = c.out_dtype;
    Tensor k, v;
    make_layout(oc, end - begin, k, rng);
    make_layout(oc, end - begin, v, rng);
    for (size_t i = 0; i < k.bytes.size(); ++i) k.bytes[i] = (uint8_t)(i * 37 + 11);
    v.bytes = k.bytes;
    nq_kv_desc out;
    nq_kv_desc_init(&out);
    out.dtype = c.out_dtype;
    out.num_tokens = end - begin;
    out.k = k.bytes.data();
    out.v = v.bytes.data();
    out.k_layout = k.layout;
    out.v_layout = v.layout;
    nq_status st = nq_decode(ctx, blk, begin, end, &out, nullptr);
    EXPECT_EQ(st, NQ_OK) << nq_last_error() << " | " << c.str();
    std::vector<uint8_t> all = k.bytes;
    all.insert(all.end(), v.bytes.begin(), v.bytes.end());
    return all;
}

size_t first_difference(const std::vector<uint8_t> &a, const std::vector<uint8_t> &b) {
    const size_t n = a.size() < b.size() ? a.size() : b.size();
    for (size_t i = 0; i < n; ++i)
        if (a[i] != b[i]) return i;
    return n;
}

class IsaEquivalence : public ::testing::TestWithParam<nq_cpu_isa> {
  protected:
    void SetUp() override {
        (void)test_seed();
        if (GetParam() > nq::cpu_isa_detected())
            GTEST_SKIP() << isa_name(GetParam()) << " is not available on this CPU/OS (best: "
                         << isa_name(nq::cpu_isa_detected()) << ")";
    }

    // Compresses and decodes one case with the reference (scalar, one thread) and with
    // the ISA under test at the case's thread count; everything must be equal.
    void check(const Case &c, uint64_t case_seed) {
        SCOPED_TRACE(c.str());
        std::mt19937_64 rng(case_seed);
        Inputs in;
        make_inputs(c, rng, in);
        nq_context *ref = make_context(c, NQ_ISA_SCALAR, 1);
        nq_context *ctx = make_context(c, GetParam(), c.threads);
        ASSERT_TRUE(ref && ctx);
        ASSERT_STREQ(nq_context_cpu_isa(ctx), isa_name(GetParam()));
        Encoded a, b;
        compress(ref, in, a);
        compress(ctx, in, b);
        ASSERT_EQ(a.status, b.status) << a.message << " / " << b.message;
        EXPECT_EQ(a.message, b.message);
        if (a.status == NQ_OK) {
            ASSERT_EQ(a.bytes.size(), b.bytes.size());
            const size_t at = first_difference(a.bytes, b.bytes);
            EXPECT_EQ(at, a.bytes.size()) << "resident bytes differ first at byte " << at;
            uint64_t da = 0, db = 0;
            nq_block_digest(a.blk, &da);
            nq_block_digest(b.blk, &db);
            EXPECT_EQ(da, db);

            nq_block_info info;
            info.size = sizeof info;
            ASSERT_EQ(nq_block_get_info(a.blk, &info), NQ_OK);
            const uint32_t K = info.tokens_kept;
            std::uniform_int_distribution<uint32_t> pick(0, K);
            uint32_t r0 = pick(rng), r1 = pick(rng);
            if (r0 > r1) std::swap(r0, r1);
            if (r0 == r1) r1 = r0 < K ? r0 + 1 : r0;
            const uint64_t out_seed = rng();
            for (auto range : {std::pair<uint32_t, uint32_t>{0, K}, std::pair<uint32_t, uint32_t>{r0, r1}}) {
                if (range.first == range.second) continue;
                const auto ra = decode(ref, a.blk, c, range.first, range.second, std::mt19937_64(out_seed));
                const auto rb = decode(ctx, a.blk, c, range.first, range.second, std::mt19937_64(out_seed));
                const size_t d = first_difference(ra, rb);
                EXPECT_EQ(d, ra.size()) << "decoded bytes of [" << range.first << ", " << range.second
                                        << ") differ first at byte " << d;
            }
        }
        nq_block_free(a.blk);
        nq_block_free(b.blk);
        nq_context_free(ref);
        nq_context_free(ctx);
    }
};

const uint32_t kHeadDims[] = {8, 16, 24, 40, 64, 72, 80, 96, 112, 128, 136, 192, 256, 384, 512};

template <class T, size_t N> T pick_of(const T (&a)[N], std::mt19937_64 &rng) {
    return a[std::uniform_int_distribution<size_t>(0, N - 1)(rng)];
}

Case random_case(std::mt19937_64 &rng) {
    Case c;
    std::uniform_int_distribution<uint32_t> u(0, 1u << 30);
    c.heads = 1 + u(rng) % 3;
    c.head_dim = pick_of(kHeadDims, rng);
    c.tokens = 1 + u(rng) % (c.head_dim >= 256 ? 90 : 160);
    c.codec = u(rng) % 2 ? NQ_CODEC_E8 : NQ_CODEC_SCALAR;
    c.k_bits = 1 + u(rng) % 8;
    c.v_bits = 1 + u(rng) % 8;
    const nq_dtype dts[] = {NQ_DTYPE_F16, NQ_DTYPE_BF16, NQ_DTYPE_F32};
    c.dtype = pick_of(dts, rng);
    c.out_dtype = pick_of(dts, rng);
    const nq_rope_mode modes[] = {NQ_ROPE_REMOVE, NQ_ROPE_REMOVE, NQ_ROPE_KEEP, NQ_ROPE_NONE};
    c.rope = pick_of(modes, rng);
    c.pairing = u(rng) % 2 ? NQ_ROPE_SPLIT_HALF : NQ_ROPE_INTERLEAVED;
    const nq_rope_scaling sc[] = {NQ_ROPE_SCALING_NONE, NQ_ROPE_SCALING_NONE, NQ_ROPE_SCALING_LINEAR,
                                  NQ_ROPE_SCALING_DYNAMIC_NTK, NQ_ROPE_SCALING_LLAMA3, NQ_ROPE_SCALING_YARN};
    c.scaling = pick_of(sc, rng);
    c.rotary_dims = u(rng) % 4 == 0 ? 2 * (1 + u(rng) % (c.head_dim / 2)) : 0;
    c.evict = u(rng) % 3 == 0 ? 0.3f : 0.0f;
    c.evict_mode = u(rng) % 2 ? NQ_EVICT_PER_HEAD : NQ_EVICT_HEAD_SHARED;
    c.layout = (Layout)(u(rng) % kNumLayouts);
    c.threads = 1 + u(rng) % 3;
    c.start_position = u(rng) % 4 == 0 ? (int64_t)(u(rng) % 2000000000u) : (int64_t)(u(rng) % 5000);
    return c;
}

TEST_P(IsaEquivalence, EveryCodecBitsAndHeadDim) {
    std::mt19937_64 rng(test_seed() ^ 0x1111);
    for (nq_codec codec : {NQ_CODEC_E8, NQ_CODEC_SCALAR})
        for (uint32_t bits = 1; bits <= 8; ++bits)
            for (uint32_t D : kHeadDims) {
                Case c = random_case(rng);
                c.codec = codec;
                c.k_bits = bits;
                c.v_bits = 1 + (bits + 3) % 8;
                c.head_dim = D;
                if (c.rotary_dims > D) c.rotary_dims = 0;
                check(c, rng());
                if (HasFatalFailure() || ::testing::Test::HasFailure()) return;
            }
}

TEST_P(IsaEquivalence, DtypesRopeEvictionThreadsLayouts) {
    std::mt19937_64 rng(test_seed() ^ 0x2222);
    const uint32_t dims[] = {64, 80, 96, 128, 256};
    for (nq_dtype dt : {NQ_DTYPE_F16, NQ_DTYPE_BF16, NQ_DTYPE_F32})
        for (nq_rope_mode rope : {NQ_ROPE_REMOVE, NQ_ROPE_KEEP, NQ_ROPE_NONE})
            for (nq_rope_pairing pairing : {NQ_ROPE_SPLIT_HALF, NQ_ROPE_INTERLEAVED})
                for (nq_rope_scaling scaling : {NQ_ROPE_SCALING_NONE, NQ_ROPE_SCALING_YARN})
                    for (float evict : {0.0f, 0.4f})
                        for (uint32_t threads : {1u, 2u, 3u}) {
                            Case c = random_case(rng);
                            c.dtype = dt;
                            c.rope = rope;
                            c.pairing = pairing;
                            c.scaling = scaling;
                            c.evict = evict;
                            c.threads = threads;
                            c.head_dim = pick_of(dims, rng);
                            c.rotary_dims = 0;
                            c.tokens = 17 + (uint32_t)(rng() % 150);
                            check(c, rng());
                            if (::testing::Test::HasFailure()) return;
                        }
    for (int layout = 0; layout < kNumLayouts; ++layout)
        for (int i = 0; i < 6; ++i) {
            Case c = random_case(rng);
            c.layout = (Layout)layout;
            check(c, rng());
            if (::testing::Test::HasFailure()) return;
        }
}

// Long enough for multi-tile tasks on every thread, the benchmark's shape.
TEST_P(IsaEquivalence, LargeBlocks) {
    std::mt19937_64 rng(test_seed() ^ 0x3333);
    for (uint32_t threads : {1u, 2u, 3u}) {
        Case c;
        c.heads = 8;
        c.head_dim = 128;
        c.tokens = 1000 + (uint32_t)(rng() % 200);
        c.threads = threads;
        c.start_position = (int64_t)(rng() % 100000);
        c.evict = threads == 3 ? 0.3f : 0.0f;
        check(c, rng());
    }
}

TEST_P(IsaEquivalence, SpecialValuesInRawRows) {
    std::mt19937_64 rng(test_seed() ^ 0x4444);
    for (nq_dtype dt : {NQ_DTYPE_F16, NQ_DTYPE_BF16, NQ_DTYPE_F32})
        for (nq_dtype out : {NQ_DTYPE_F16, NQ_DTYPE_BF16, NQ_DTYPE_F32}) {
            Case c = random_case(rng);
            c.dtype = dt;
            c.out_dtype = out;
            c.evict = 0.0f;
            c.start_position = 0;
            c.tokens = 40 + (uint32_t)(rng() % 60);  // rows 0, 1 are sinks, the last two in the window
            c.specials = 2;  // stored and decoded bit for bit the same on every ISA
            check(c, rng());
            c.specials = 1;  // NaN/inf: refused the same way on every ISA
            check(c, rng());
        }
}

// A NaN in a quantised row fails the same way (status and message) on every ISA.
TEST_P(IsaEquivalence, NonFiniteInputFailsTheSame) {
    std::mt19937_64 rng(test_seed() ^ 0x5555);
    for (int i = 0; i < 6; ++i) {
        Case c = random_case(rng);
        c.tokens = 80;
        c.evict = 0.0f;
        c.start_position = 100;
        Inputs in;
        make_inputs(c, rng, in);
        const uint32_t tok = 10 + (uint32_t)(rng() % 30), h = (uint32_t)(rng() % c.heads);
        put_bits16(i % 2 ? in.v : in.k, c.dtype, h, tok, (uint32_t)(rng() % c.head_dim), i % 3 ? 0x7e00 : 0x7c00);
        nq_context *ref = make_context(c, NQ_ISA_SCALAR, 1);
        nq_context *ctx = make_context(c, GetParam(), c.threads);
        ASSERT_TRUE(ref && ctx);
        Encoded a, b;
        compress(ref, in, a);
        compress(ctx, in, b);
        EXPECT_NE(a.status, NQ_OK) << c.str();
        EXPECT_EQ(a.status, b.status) << c.str();
        EXPECT_EQ(a.message, b.message) << c.str();
        nq_block_free(a.blk);
        nq_block_free(b.blk);
        nq_context_free(ref);
        nq_context_free(ctx);
    }
}

#if defined(__x86_64__) || defined(__i386__)
// The caller's MXCSR (flush-to-zero, denormals-are-zero, rounding toward zero) changes
// nothing: the library installs the IEEE default for its own work.
TEST_P(IsaEquivalence, CallerFloatingPointModeIsIgnored) {
    std::mt19937_64 rng(test_seed() ^ 0x6666);
    for (int i = 0; i < 4; ++i) {
        Case c = random_case(rng);
        c.tokens = 60;
        Inputs in;
        make_inputs(c, rng, in);
        // subnormal-producing inputs: tiny rows
        for (uint32_t d = 0; d < c.head_dim; ++d) put(in.k, c.dtype, 0, 50, d, 1e-30f * (float)(d + 1));
        nq_context *ref = make_context(c, NQ_ISA_SCALAR, 1);
        nq_context *ctx = make_context(c, GetParam(), c.threads);
        ASSERT_TRUE(ref && ctx);
        Encoded a, b;
        compress(ref, in, a);
        ASSERT_EQ(a.status, NQ_OK) << a.message << " | " << c.str();
        nq_block_info info;
        info.size = sizeof info;
        ASSERT_EQ(nq_block_get_info(a.blk, &info), NQ_OK);
        const auto want = decode(ref, a.blk, c, 0, info.tokens_kept, std::mt19937_64(1));
        const unsigned saved = _mm_getcsr();
        const unsigned mode = 0x1f80u | 0x8000u /* FTZ */ | 0x0040u /* DAZ */ | 0x6000u /* toward zero */;
        _mm_setcsr(mode);
        compress(ctx, in, b);
        const unsigned after_compress = _mm_getcsr();
        std::vector<uint8_t> got;
        if (b.status == NQ_OK) got = decode(ctx, a.blk, c, 0, info.tokens_kept, std::mt19937_64(1));
        const unsigned after_decode = _mm_getcsr();
        _mm_setcsr(saved);
        EXPECT_EQ(after_compress & 0xffc0u, mode & 0xffc0u) << "the caller's mode was not restored";
        EXPECT_EQ(after_decode & 0xffc0u, mode & 0xffc0u) << "the caller's mode was not restored";
        ASSERT_EQ(b.status, NQ_OK) << b.message << " | " << c.str();
        EXPECT_EQ(a.bytes, b.bytes) << c.str();
        EXPECT_EQ(want, got) << c.str();
        nq_block_free(a.blk);
        nq_block_free(b.blk);
        nq_context_free(ref);
        nq_context_free(ctx);
    }
}
#endif

// The vectorised RoPE tables against rope_tables() itself, value by value, over many
// positions (up to 2^32 - 1) and every scaling.
TEST_P(IsaEquivalence, RopeTablesMatchReference) {
    const nq::CpuKernels *kn = nq::cpu_kernels(GetParam());
    if (!kn) GTEST_SKIP() << "the scalar ISA computes the tables with rope_tables itself";
    std::mt19937_64 rng(test_seed() ^ 0x7777);
    const uint32_t W = kn->lanes;
    uint64_t values = 0;
    for (int spec_i = 0; spec_i < 40; ++spec_i) {
        nq::RopeSpec spec;
        spec.rotary_dims = 2 * (1 + (uint32_t)(rng() % 256));
        spec.theta = spec_i % 2 ? 10000.0 : 500000.0 + (double)(rng() % 1000);
        spec.scaling = (uint8_t)(spec_i % 5);
        spec.factor = 1.0 + (double)(rng() % 31);
        spec.original_max_position = 1024u << (rng() % 5);
        spec.attention_factor = spec_i % 7 == 0 ? 0.25 + (double)(rng() % 1000) / 100.0 : 0.0;
        const uint32_t nf = spec.rotary_dims / 2;
        std::vector<double> inv(nf);
        double mscale = 1.0;
        nq::rope_inv_freq(spec, 1u + (uint32_t)(rng() % 200000), inv.data(), &mscale);
        std::vector<float> c(nf * W), s(nf * W), rc(nf), rs(nf);
        for (int batch = 0; batch < 60; ++batch) {
            int64_t pos[nq::kTileLanesMax];
            const int kind = batch % 4;
            const int64_t base = kind == 0 ? (int64_t)(rng() % 4096)
                               : kind == 1 ? (int64_t)(rng() % 1000000)
                               : kind == 2 ? (int64_t)(rng() % 4294967280ull) : 4294967295ll - 15;
            const uint32_t lanes = 1 + (uint32_t)(rng() % W);
            for (uint32_t w = 0; w < lanes; ++w) pos[w] = base + w;
            for (bool inverse : {false, true}) {
                nq::RopeTableArgs a{inv.data(), nf, mscale, pos, lanes, inverse, c.data(), s.data()};
                kn->rope_tables(a);
                for (uint32_t w = 0; w < lanes; ++w) {
                    if (inverse)
                        nq::rope_tables(inv.data(), nf, mscale, pos[w], nullptr, nullptr, rc.data(), rs.data());
                    else
                        nq::rope_tables(inv.data(), nf, mscale, pos[w], rc.data(), rs.data(), nullptr, nullptr);
                    for (uint32_t p = 0; p < nf; ++p) {
                        ASSERT_EQ(nq::f32_bits(c[p * W + w]), nq::f32_bits(rc[p]))
                            << "cos, position " << pos[w] << " freq " << p << " scaling " << (int)spec.scaling
                            << " seed " << test_seed();
                        ASSERT_EQ(nq::f32_bits(s[p * W + w]), nq::f32_bits(rs[p]))
                            << "sin, position " << pos[w] << " freq " << p << " scaling " << (int)spec.scaling
                            << " seed " << test_seed();
                        values += 2;
                    }
                }
            }
        }
    }
    std::printf("[isa] %s: %" PRIu64 " table values equal to rope_tables()\n", isa_name(GetParam()), values);
}

// Engine threads calling into one context at once: a call that finds the pool busy runs
// inline; every result is still the reference's.
TEST_P(IsaEquivalence, ConcurrentCallersShareOneContext) {
    std::mt19937_64 rng(test_seed() ^ 0x8888);
    Case c;
    c.heads = 4;
    c.head_dim = 128;
    c.tokens = 700;
    Inputs in;
    make_inputs(c, rng, in);
    nq_context *ref = make_context(c, NQ_ISA_SCALAR, 1);
    nq_context *ctx = make_context(c, GetParam(), 2);
    ASSERT_TRUE(ref && ctx);
    Encoded a;
    compress(ref, in, a);
    ASSERT_EQ(a.status, NQ_OK);
    std::vector<std::vector<uint8_t>> got(4);
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i)
        threads.emplace_back([&, i] {
            for (int rep = 0; rep < 3; ++rep) {
                nq_block *b = nullptr;
                if (nq_compress_kv(ctx, &in.kv, nullptr, nullptr, &b) != NQ_OK) return;
                const void *data;
                size_t n;
                nq_block_data(b, &data, &n);
                got[i].assign(static_cast<const uint8_t *>(data), static_cast<const uint8_t *>(data) + n);
                nq_block_free(b);
            }
        });
    for (auto &t : threads) t.join();
    for (int i = 0; i < 4; ++i) EXPECT_EQ(got[i], a.bytes) << "caller " << i;
    nq_block_free(a.blk);
    nq_context_free(ref);
    nq_context_free(ctx);
}

INSTANTIATE_TEST_SUITE_P(Isa, IsaEquivalence, ::testing::Values(NQ_ISA_SCALAR, NQ_ISA_AVX2, NQ_ISA_AVX512),
                         [](const ::testing::TestParamInfo<nq_cpu_isa> &i) { return std::string(isa_name(i.param)); });

// ---------------------------------------------------------------- the ISA cap

TEST(IsaCap, RuleForEveryCombination) {
    const nq_cpu_isa all[] = {NQ_ISA_SCALAR, NQ_ISA_AVX2, NQ_ISA_AVX512};
    const nq_cpu_isa caps[] = {NQ_ISA_AUTO, NQ_ISA_SCALAR, NQ_ISA_AVX2, NQ_ISA_AVX512};
    const char *envs[] = {nullptr, "scalar", "avx2", "avx512", "AVX2", "bogus", ""};
    const nq_cpu_isa env_cap[] = {NQ_ISA_AUTO, NQ_ISA_SCALAR, NQ_ISA_AVX2, NQ_ISA_AVX512, NQ_ISA_AVX2, NQ_ISA_AUTO, NQ_ISA_AUTO};
    for (nq_cpu_isa best : all)
        for (nq_cpu_isa cap : caps)
            for (size_t e = 0; e < sizeof envs / sizeof *envs; ++e) {
                nq_cpu_isa want = best;
                if (cap != NQ_ISA_AUTO && cap < want) want = cap;  // a cap above the CPU: the best it has
                if (env_cap[e] != NQ_ISA_AUTO && env_cap[e] < want) want = env_cap[e];
                EXPECT_EQ(nq::cpu_isa_capped(best, cap, envs[e]), want)
                    << "best " << isa_name(best) << " cap " << (int)cap << " env " << (envs[e] ? envs[e] : "(unset)");
            }
}

nq_context *context_with_cap(nq_cpu_isa cap) {
    nq_config cfg;
    nq_config_init(&cfg);
    cfg.cpu_isa = cap;
    nq_context *ctx = nullptr;
    EXPECT_EQ(nq_context_create(&cfg, &ctx), NQ_OK) << nq_last_error();
    return ctx;
}

TEST(IsaCap, ConfigAndEnvironmentOnThisMachine) {
    const nq_cpu_isa best = nq::cpu_isa_detected();
    const char *saved = std::getenv("NQ_CPU_ISA");
    const std::string saved_value = saved ? saved : "";
    unsetenv("NQ_CPU_ISA");
    for (nq_cpu_isa cap : {NQ_ISA_AUTO, NQ_ISA_SCALAR, NQ_ISA_AVX2, NQ_ISA_AVX512}) {
        nq_context *ctx = context_with_cap(cap);
        const nq_cpu_isa want = cap == NQ_ISA_AUTO || cap > best ? best : cap;
        EXPECT_STREQ(nq_context_cpu_isa(ctx), isa_name(want)) << "config cap " << (int)cap;
        nq_context_free(ctx);
    }
    for (const char *env : {"scalar", "avx2", "avx512"}) {
        setenv("NQ_CPU_ISA", env, 1);
        for (nq_cpu_isa cap : {NQ_ISA_AUTO, NQ_ISA_AVX2, NQ_ISA_AVX512}) {
            nq_context *ctx = context_with_cap(cap);
            EXPECT_STREQ(nq_context_cpu_isa(ctx), isa_name(nq::cpu_isa_capped(best, cap, env))) << env;
            nq_context_free(ctx);
        }
    }
    setenv("NQ_CPU_ISA", "scalar", 1);
    nq_context *ctx = context_with_cap(NQ_ISA_AVX512);
    EXPECT_STREQ(nq_context_cpu_isa(ctx), "scalar");
    nq_context_free(ctx);
    if (saved)
        setenv("NQ_CPU_ISA", saved_value.c_str(), 1);
    else
        unsetenv("NQ_CPU_ISA");
}

TEST(IsaCap, DetectedIsaHasKernels) {
    const nq_cpu_isa best = nq::cpu_isa_detected();
    if (best == NQ_ISA_SCALAR) GTEST_SKIP() << "no SIMD ISA on this machine";
    const nq::CpuKernels *kn = nq::cpu_kernels(best);
    ASSERT_NE(kn, nullptr);
    EXPECT_EQ(kn->isa, best);
    EXPECT_STREQ(kn->name, isa_name(best));
}

}  // namespace
