// Presets: names, per-layer overrides, the ratios the header promises on a long
// context (measured on real blocks), nq_estimate_bytes against real block sizes, and
// the KV-cache arithmetic.
#include <cctype>
#include <cstdint>
#include <string>
#include <vector>

#include "api_harness.h"

using namespace nqt;

TEST(Presets, NamesParseCaseInsensitively) {
    struct Name {
        const char *name;
        nq_preset preset;
    };
    const Name names[] = {{"lossless", NQ_PRESET_LOSSLESS},     {"high", NQ_PRESET_HIGH},
                          {"conservative", NQ_PRESET_HIGH},     {"balanced", NQ_PRESET_BALANCED},
                          {"max", NQ_PRESET_MAX},               {"aggressive", NQ_PRESET_MAX},
                          {"s", NQ_PRESET_S},                   {"m", NQ_PRESET_M},
                          {"l", NQ_PRESET_L},                   {"xl", NQ_PRESET_XL},
                          {"custom", NQ_PRESET_CUSTOM}};
    EXPECT_EQ(NQ_PRESET_CONSERVATIVE, NQ_PRESET_HIGH);
    EXPECT_EQ(NQ_PRESET_AGGRESSIVE, NQ_PRESET_MAX);
    for (const Name &n : names) {
        for (int variant = 0; variant < 4; ++variant) {
            std::string s = n.name;
            for (char &ch : s) {
                const bool up = variant == 1 || (variant == 2 && below(2)) || (variant == 3 && &ch == &s[0]);
                if (up) ch = (char)std::toupper((unsigned char)ch);
            }
            nq_preset p = (nq_preset)-1;
            ASSERT_EQ(nq_preset_from_name(s.c_str(), &p), NQ_OK) << s << ": " << nq_last_error();
            EXPECT_EQ(p, n.preset) << s;
        }
    }
    // Canonical names parse back to their preset.
    for (int p = NQ_PRESET_CUSTOM; p <= NQ_PRESET_XL; ++p) {
        nq_preset back = (nq_preset)-1;
        ASSERT_EQ(nq_preset_from_name(nq_preset_name((nq_preset)p), &back), NQ_OK);
        EXPECT_EQ(back, (nq_preset)p);
    }
    EXPECT_STREQ(nq_preset_name(NQ_PRESET_BALANCED), "balanced");
    EXPECT_STREQ(nq_preset_name((nq_preset)77), "unknown");
    for (const char *bad : {"", "lossles", "high ", " max", "x", "extra-large-preset-name-that-is-long", "xxl", "MAXIMUM"}) {
        nq_preset p = NQ_PRESET_L;
        EXPECT_EQ(nq_preset_from_name(bad, &p), NQ_ERR_INVALID_ARGUMENT) << bad;
        EXPECT_EQ(p, NQ_PRESET_L) << "output written on failure";
    }
}

TEST(Presets, LayerParamsWithOverrides) {
    const nq_layer_override ov[] = {
        {0, 2, 8, 8, 0.0f, 0},     // first layers at high precision, no eviction
        {30, 32, 4, 0, -1.0f, 0},  // last layers: more key bits, the preset's values and eviction
        {10, 11, 0, 0, 0.9f, 0},   // one layer evicts more
    };
    nq_config c;
    nq_config_init(&c);
    c.preset = NQ_PRESET_BALANCED;
    c.overrides = ov;
    c.num_overrides = 3;
    Ctx ctx = make_ctx(c);
    ASSERT_TRUE(ctx);
    auto params = [&](uint32_t layer) {
        nq_layer_params p;
        std::memset(&p, 0, sizeof p);
        p.size = sizeof p;
        EXPECT_EQ(nq_context_layer_params(ctx.get(), layer, &p), NQ_OK);
        return p;
    };
    const nq_layer_params base = params(5);
    EXPECT_EQ(base.k_bits, 3u);
    EXPECT_EQ(base.v_bits, 2u);
    EXPECT_NEAR(base.evict_fraction, 0.64f, 1e-6);
    EXPECT_EQ(base.sink_tokens, 4u);
    EXPECT_EQ(base.fp16_sinks, 4u);
    EXPECT_EQ(base.fp16_window, 32u);
    EXPECT_GE(base.recent_window, base.fp16_window);
    for (uint32_t l : {0u, 1u}) {
        nq_layer_params p = params(l);
        EXPECT_EQ(p.k_bits, 8u);
        EXPECT_EQ(p.v_bits, 8u);
        EXPECT_EQ(p.evict_fraction, 0.0f);
    }
    EXPECT_EQ(params(2).k_bits, 3u);
    for (uint32_t l : {30u, 31u}) {
        nq_layer_params p = params(l);
        EXPECT_EQ(p.k_bits, 4u);
        EXPECT_EQ(p.v_bits, base.v_bits);
        EXPECT_EQ(p.evict_fraction, base.evict_fraction);
    }
    EXPECT_EQ(params(32).k_bits, 3u);
    EXPECT_NEAR(params(10).evict_fraction, 0.9f, 1e-6);
    EXPECT_EQ(params(10).k_bits, 3u);
    // The copy is the context's: changing the caller's array does nothing.
    const_cast<nq_layer_override &>(ov[0]).k_bits = 1;
    EXPECT_EQ(params(0).k_bits, 8u);
    const_cast<nq_layer_override &>(ov[0]).k_bits = 8;
    // Explicit fields win over the preset.
    nq_config e;
    nq_config_init(&e);
    e.preset = NQ_PRESET_MAX;
    e.k_bits = 5;
    e.evict_fraction = 0.25f;
    Ctx ectx = make_ctx(e);
    nq_layer_params p;
    p.size = sizeof p;
    ASSERT_EQ(nq_context_layer_params(ectx.get(), 0, &p), NQ_OK);
    EXPECT_EQ(p.k_bits, 5u);
    EXPECT_EQ(p.v_bits, 2u);
    EXPECT_EQ(p.evict_fraction, 0.25f);
    // Overrides change real blocks: layer 0 of `ctx` is stored at 8 bits.
    const uint32_t T = 100, D = 128;
    Tensor k(NQ_DTYPE_F16, Layout::HTD, 1, T, D), v(NQ_DTYPE_F16, Layout::HTD, 1, T, D);
    Values K = random_values(1, T, D), V = random_values(1, T, D);
    store(k, K);
    store(v, V);
    nq_kv_desc kv = kv_desc(k, v, T);
    kv.layer = 0;
    Block b0 = compress(ctx.get(), kv);
    kv.layer = 10;
    Block b10 = compress(ctx.get(), kv);
    EXPECT_EQ(info_of(b0.get()).k_bits, 8u);
    EXPECT_EQ(info_of(b0.get()).tokens_kept, T);
    EXPECT_EQ(info_of(b10.get()).layer, 10u);
    EXPECT_EQ(info_of(b10.get()).tokens_kept, 36u);  // 90% evicted, but sinks and window stay
}

// Real block ratios on a long context: 8 KV heads, head_dim 128, 4096 tokens.
TEST(Presets, RatiosOnALongContext) {
    const uint32_t H = 8, T = 4096, D = 128;
    Tensor k(NQ_DTYPE_F16, Layout::THD, H, T, D), v(NQ_DTYPE_F16, Layout::THD, H, T, D);
    Values K = random_values(H, T, D, Dist::KeysWithOutliers), V = random_values(H, T, D);
    store(k, K);
    store(v, V);
    nq_kv_desc kv = kv_desc(k, v, T);
    struct Want {
        nq_preset preset;
        double lo, hi;
    };
    const Want wants[] = {
        {NQ_PRESET_LOSSLESS, 5.0, 1e9}, {NQ_PRESET_HIGH, 8.0, 12.0}, {NQ_PRESET_BALANCED, 12.0, 1e9},
        {NQ_PRESET_MAX, 25.0, 1e9},     {NQ_PRESET_S, 4.0, 6.0},     {NQ_PRESET_M, 8.0, 12.0},
        {NQ_PRESET_L, 17 * 0.8, 17 * 1.2}, {NQ_PRESET_XL, 33 * 0.8, 33 * 1.2},
    };
    for (const Want &w : wants) {
        nq_config c;
        nq_config_init(&c);
        c.num_kv_heads = H;
        c.head_dim = D;
        c.preset = w.preset;
        Ctx ctx = make_ctx(c);
        Block b = compress(ctx.get(), kv);
        ASSERT_TRUE(b) << nq_preset_name(w.preset);
        nq_block_info info = info_of(b.get());
        EXPECT_GE(info.ratio, w.lo) << nq_preset_name(w.preset);
        EXPECT_LE(info.ratio, w.hi) << nq_preset_name(w.preset);
        EXPECT_EQ(info.original_bytes, 2ull * H * T * D * 2);
        const void *data;
        size_t bytes;
        ASSERT_EQ(nq_block_data(b.get(), &data, &bytes), NQ_OK);
        EXPECT_DOUBLE_EQ(info.ratio, (double)info.original_bytes / (double)bytes);
        std::printf("[  RATIO ] %-9s %6.2fx (K%u V%u, %u of %u tokens kept)\n", nq_preset_name(w.preset), info.ratio,
                    info.k_bits, info.v_bits, info.tokens_kept, info.tokens_in);
        uint64_t est = 0;
        ASSERT_EQ(nq_estimate_bytes(ctx.get(), 1, T, &est), NQ_OK);
        EXPECT_GE(est, bytes) << nq_preset_name(w.preset);  // the bound when blocks choose their bits
    }
}

// nq_compress_bound bounds the real block of every layer (equal where the bits are
// fixed), and nq_estimate_bytes is the sum of the bounds.
TEST(Presets, EstimateEqualsRealBlocks) {
    const uint32_t H = 2, D = 64;
    const nq_layer_override ov[] = {{0, 1, 8, 6, 0.0f, 0}, {3, 4, 2, 2, 0.7f, 0}};
    for (nq_preset preset : {NQ_PRESET_LOSSLESS, NQ_PRESET_BALANCED, NQ_PRESET_XL}) {
        nq_config c;
        nq_config_init(&c);
        c.num_kv_heads = H;
        c.head_dim = D;
        c.preset = preset;
        c.overrides = ov;
        c.num_overrides = 2;
        c.evict_mode = preset == NQ_PRESET_XL ? NQ_EVICT_PAGED : NQ_EVICT_PER_HEAD;
        Ctx ctx = make_ctx(c);
        for (uint32_t T : {1u, 7u, 37u, 300u, 1000u}) {
            Tensor k(NQ_DTYPE_F16, Layout::HTD, H, T, D), v(NQ_DTYPE_F16, Layout::HTD, H, T, D);
            Values K = random_values(H, T, D), V = random_values(H, T, D);
            store(k, K);
            store(v, V);
            const uint32_t layers = 5;
            uint64_t real = 0;
            for (uint32_t l = 0; l < layers; ++l) {
                nq_kv_desc kv = kv_desc(k, v, T);
                kv.layer = l;
                size_t bound = 0;
                ASSERT_EQ(nq_compress_bound(ctx.get(), &kv, &bound), NQ_OK);
                Block b = compress(ctx.get(), kv);
                ASSERT_TRUE(b);
                // presets choose bits per block from the data: the bound plans the
                // largest candidate pair; layers 0 and 3 have fixed bits (overrides)
                if (l == 0 || l == 3)
                    EXPECT_EQ(info_of(b.get()).resident_bytes, bound) << "layer " << l << " T " << T;
                else
                    EXPECT_LE(info_of(b.get()).resident_bytes, bound) << "layer " << l << " T " << T;
                real += bound;
            }
            uint64_t est = 0;
            ASSERT_EQ(nq_estimate_bytes(ctx.get(), layers, T, &est), NQ_OK);
            EXPECT_EQ(est, real) << nq_preset_name(preset) << " T " << T;
        }
    }
}

TEST(Presets, KvCacheArithmetic) {
    EXPECT_EQ(nq_kv_cache_bytes(32, 8, 128, 128000, 2), 16777216000ull);  // Llama-3-8B at 128k, fp16
    EXPECT_EQ(nq_kv_cache_bytes(80, 8, 128, 128000, 2), 41943040000ull);  // Llama-3-70B
    EXPECT_EQ(nq_kv_cache_bytes(1, 1, 1, 1, 1), 2ull);
    EXPECT_EQ(nq_kv_cache_bytes(0, 8, 128, 1000, 2), 0ull);
    for (int rep = 0; rep < 100; ++rep) {
        const uint64_t l = 1 + below(128), h = 1 + below(64), d = 8 * (1 + below(64)), t = 1 + below(1u << 20),
                       b = 1 + below(4);
        EXPECT_EQ(nq_kv_cache_bytes(l, h, d, t, b), 2 * l * h * d * t * b);
    }
}

// A target ratio plans bits and eviction that reach it on a long context (the plan
// leaves out the fp16 sinks and window, a few percent at this length).
TEST(Presets, TargetRatio) {
    const uint32_t H = 2, T = 4096, D = 128;
    Tensor k(NQ_DTYPE_F16, Layout::HTD, H, T, D), v(NQ_DTYPE_F16, Layout::HTD, H, T, D);
    Values K = random_values(H, T, D), V = random_values(H, T, D);
    store(k, K);
    store(v, V);
    for (float target : {3.0f, 6.0f, 9.0f, 14.0f, 20.0f}) {
        nq_config c;
        nq_config_init(&c);
        c.num_kv_heads = H;
        c.head_dim = D;
        c.target_ratio = target;
        Ctx ctx = make_ctx(c);
        Block b = compress(ctx.get(), kv_desc(k, v, T));
        ASSERT_TRUE(b);
        const double r = info_of(b.get()).ratio;
        EXPECT_GE(r, target * 0.75) << target;
        EXPECT_LE(r, target * 1.25) << target;
    }
}

// Block sizes follow docs/FORMAT.md: a 128-byte header, then each section padded to 16
// bytes. nq_estimate_bytes reaches the largest contexts without materialising them.
TEST(Presets, EstimateFollowsTheFormatUpToHugeContexts) {
    auto align16 = [](uint64_t x) { return (x + 15) / 16 * 16; };
    for (uint32_t rep = 0; rep < 6; ++rep) {
        const uint32_t H = 1 + below(8), D = 8 * (1 + below(64)), kb = 1 + below(8), vb = 1 + below(8);
        nq_config c;
        nq_config_init(&c);
        c.num_kv_heads = H;
        c.head_dim = D;
        c.k_bits = kb;
        c.v_bits = vb;
        Ctx ctx = make_ctx(c);
        for (uint64_t T : {(uint64_t)100, (uint64_t)1000003, (uint64_t)0xffffffffull}) {
            const uint64_t raw = 4 + 32, coded = T - raw;  // lossless: 4 fp16 sinks, 32 fp16 window tokens
            const uint64_t want = 128 + 2 * align16(H * coded * 2) + align16(H * coded * D * kb / 8) +
                                  align16(H * coded * D * vb / 8) + 2 * align16(H * raw * D * 2) +
                                  (c.key_centering ? align16(H * D * 2) : 0);  // the key mean (on by default)
            uint64_t est = 0;
            ASSERT_EQ(nq_estimate_bytes(ctx.get(), 3, T, &est), NQ_OK) << nq_last_error();
            EXPECT_EQ(est, 3 * want) << "H " << H << " D " << D << " K" << kb << " V" << vb << " T " << T;
        }
    }
}
