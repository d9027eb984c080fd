// Key centering (nq_config.key_centering, docs/FORMAT.md 1.8): the per-(block, head)
// mean of the coded keys in the rotated domain, stored at fp16 and added back on decode.
// Checked against the definition (float64 sums in runs of slots over the core's rotation),
// against float64 ground truth, across instruction sets, through the archive form, and
// CPU attention over such blocks against float64.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../src/core/hadamard.h"
#include "../src/core/half.h"
#include "../src/core/vector_codec.h"
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

constexpr uint32_t H = 2, D = 64, T = 600;  // 3 key-mean runs (FORMAT.md 1.8): 256, 256, 88

nq_config config(uint32_t centring, nq_cpu_isa isa = NQ_ISA_AUTO, uint32_t threads = 1, uint32_t k_bits = 3) {
    nq_config c;
    nq_config_init(&c);
    c.num_kv_heads = H;
    c.head_dim = D;
    c.preset = NQ_PRESET_CUSTOM;
    c.k_bits = k_bits;
    c.v_bits = 2;
    c.evict_fraction = 0.0f;
    c.sink_tokens = 0;
    c.recent_window = 0;
    c.fp16_sinks = 0;
    c.fp16_window = 0;
    c.rope.mode = NQ_ROPE_NONE;
    c.cpu_isa = isa;
    c.num_threads = threads;
    c.key_centering = centring;
    return c;
}

Ctx make(const nq_config &c) {
    nq_context *p = nullptr;
    EXPECT_EQ(nq_context_create(&c, &p), NQ_OK) << nq_last_error();
    return Ctx(p);
}

// Keys [H][T][D] f32 with a large per-channel offset (the bias that centring removes)
// plus small per-token variation; values plain noise.
struct KV {
    std::vector<float> k, v;
    std::vector<int64_t> pos;
};

KV make_kv(uint32_t seed, float offset_scale = 30.0f, float noise = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> n(0.0f, 1.0f);
    KV kv;
    kv.k.resize((size_t)H * T * D);
    kv.v.resize((size_t)H * T * D);
    std::vector<float> offset((size_t)H * D);
    for (float &o : offset) o = offset_scale * n(rng);
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < T; ++t)
            for (uint32_t d = 0; d < D; ++d) {
                kv.k[((size_t)h * T + t) * D + d] = offset[(size_t)h * D + d] + noise * n(rng);
                kv.v[((size_t)h * T + t) * D + d] = n(rng);
            }
    kv.pos.resize(T);
    for (uint32_t t = 0; t < T; ++t) kv.pos[t] = 100 + 2 * t;  // gapped: positions stored
    return kv;
}

nq_kv_desc desc(KV &kv) {
    nq_kv_desc d;
    nq_kv_desc_init(&d);
    d.dtype = NQ_DTYPE_F32;
    d.num_tokens = T;
    d.k = kv.k.data();
    d.v = kv.v.data();
    d.positions = kv.pos.data();
    nq_layout_contiguous(&d.k_layout, T, D);
    nq_layout_contiguous(&d.v_layout, T, D);
    return d;
}

Block compress(nq_context *ctx, KV &kv) {
    nq_kv_desc d = desc(kv);
    nq_block *b = nullptr;
    EXPECT_EQ(nq_compress_kv(ctx, &d, nullptr, nullptr, &b), NQ_OK) << nq_last_error();
    return Block(b);
}

std::vector<uint8_t> image(const nq_block *b) {
    const void *p = nullptr;
    size_t n = 0;
    EXPECT_EQ(nq_block_data(b, &p, &n), NQ_OK);
    const uint8_t *u = static_cast<const uint8_t *>(p);
    return std::vector<uint8_t>(u, u + n);
}

void decode(nq_context *ctx, const nq_block *b, uint32_t kept, std::vector<float> *k, std::vector<float> *v) {
    k->assign((size_t)H * kept * D, 0.0f);
    v->assign((size_t)H * kept * D, 0.0f);
    nq_kv_desc o;
    nq_kv_desc_init(&o);
    o.dtype = NQ_DTYPE_F32;
    o.num_tokens = kept;
    o.k = k->data();
    o.v = v->data();
    nq_layout_contiguous(&o.k_layout, kept, D);
    nq_layout_contiguous(&o.v_layout, kept, D);
    ASSERT_EQ(nq_decode_block(ctx, b, 0, kept, &o, nullptr), NQ_OK) << nq_last_error();
}

uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
uint32_t rd32(const uint8_t *p) { return (uint32_t)rd16(p) | (uint32_t)rd16(p + 2) << 16; }

// Section offsets of the image (FORMAT.md 1): 128-byte header, then 16-aligned sections.
struct Sections {
    size_t k_scales, k_codes, k_mean;
};
Sections sections(const std::vector<uint8_t> &img, uint32_t coded, uint32_t kept, uint32_t raw, uint32_t k_bits,
                  uint32_t v_bits, uint32_t pos_rows, uint32_t pos_bytes) {
    auto up = [](size_t x) { return (x + 15) / 16 * 16; };
    size_t off = 128;
    off = up(off) + (size_t)pos_rows * kept * pos_bytes;
    Sections s;
    s.k_scales = up(off);
    off = s.k_scales + (size_t)H * coded * 2;
    off = up(off) + (size_t)H * coded * 2;  // v_scales
    s.k_codes = up(off);
    off = s.k_codes + (size_t)H * coded * D * k_bits / 8;
    off = up(off) + (size_t)H * coded * D * v_bits / 8;
    off = up(off) + (size_t)H * raw * D * 2;
    off = up(off) + (size_t)H * raw * D * 2;
    s.k_mean = up(off);
    EXPECT_EQ(up(s.k_mean + (size_t)H * D * 2), img.size());
    return s;
}

double rel_err(const std::vector<float> &got, const std::vector<float> &want) {
    double e = 0, n = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        e += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        n += (double)want[i] * want[i];
    }
    return std::sqrt(e / n);
}

// The float64 reference of the rotation: sign flip then unnormalised Walsh-Hadamard per
// block of n = hadamard_block (FORMAT.md 1.6), written here from the text.
void rotate_f64(double *x) {
    const uint32_t n = nq::hadamard_block(D);
    for (uint32_t d = 0; d < D; ++d) {
        uint64_t z = 0x6e7175616e74ull + 0x9e3779b97f4a7c15ull * (uint64_t)(d / 64 + 1);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        if ((z >> (d % 64)) & 1) x[d] = -x[d];
    }
    for (uint32_t b = 0; b < D; b += n)
        for (uint32_t h = 1; h < n; h *= 2)
            for (uint32_t j = b; j < b + n; j += 2 * h)
                for (uint32_t i = j; i < j + h; ++i) {
                    const double a = x[i], c = x[i + h];
                    x[i] = a + c;
                    x[i + h] = a - c;
                }
}

}  // namespace

// On by default; off, blocks are laid out as before the section existed.
TEST(KeyCentering, DefaultIsOnAndOffBlocksAreUnchanged) {
    nq_config c;
    nq_config_init(&c);
    EXPECT_EQ(c.key_centering, 1u);
    KV kv = make_kv(1);
    Ctx off = make(config(0)), on = make(config(1));
    Block a = compress(off.get(), kv), b = compress(on.get(), kv);
    const std::vector<uint8_t> ia = image(a.get()), ib = image(b.get());
    EXPECT_EQ(rd32(ia.data() + 8) & 8u, 0u);
    EXPECT_EQ(rd32(ib.data() + 8) & 8u, 8u);
    nq_block_info info{};
    info.size = sizeof info;
    ASSERT_EQ(nq_block_get_info(a.get(), &info), NQ_OK);
    EXPECT_EQ(info.key_mean_bytes, 0u);
    ASSERT_EQ(nq_block_get_info(b.get(), &info), NQ_OK);
    EXPECT_EQ(info.key_mean_bytes, (uint64_t)H * D * 2);
    EXPECT_EQ(info.header_bytes + info.position_bytes + info.scale_bytes + info.code_bytes + info.fp16_bytes +
                  info.key_mean_bytes + info.padding_bytes,
              info.resident_bytes);
    EXPECT_EQ(info.resident_bytes, ia.size() + (size_t)H * D * 2);  // the section is a multiple of 16 here
    EXPECT_DOUBLE_EQ(info.ratio, (double)info.original_bytes / (double)info.resident_bytes);
    // Everything before the new section is laid out as before (the section comes last).
    nq_block_info ia_info{};
    ia_info.size = sizeof ia_info;
    ASSERT_EQ(nq_block_get_info(a.get(), &ia_info), NQ_OK);
    EXPECT_EQ(ia_info.scale_bytes, info.scale_bytes);
    EXPECT_EQ(ia_info.code_bytes, info.code_bytes);
}

TEST(KeyCentering, ConfigValidation) {
    nq_config c = config(2);
    nq_context *p = nullptr;
    EXPECT_EQ(nq_context_create(&c, &p), NQ_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(nq_last_error()).find("config.key_centering"), std::string::npos) << nq_last_error();
    EXPECT_EQ(p, nullptr);
    c = config(1);
    ASSERT_EQ(nq_context_create(&c, &p), NQ_OK) << nq_last_error();
    nq_config got;
    got.size = sizeof got;
    ASSERT_EQ(nq_context_get_config(p, &got), NQ_OK);
    EXPECT_EQ(got.key_centering, 1u);
    nq_context_free(p);
}

// The stored mean and codes follow FORMAT.md 1.8 exactly (recomputed here from the
// core's rotation with float64 sums in runs of 256 slots), the mean is the float64 mean to
// fp16 precision, and decode gives back q*s + m through the inverse rotation.
TEST(KeyCentering, MatchesTheDefinition) {
    KV kv = make_kv(2);
    Ctx ctx = make(config(1, NQ_ISA_SCALAR));
    Block b = compress(ctx.get(), kv);
    const std::vector<uint8_t> img = image(b.get());
    const Sections s = sections(img, T, T, 0, 3, 2, 1, 2);
    std::vector<float> dk, dv;
    decode(ctx.get(), b.get(), T, &dk, &dv);
    for (uint32_t h = 0; h < H; ++h) {
        double sum[D] = {}, run[D] = {}, ref[D] = {};
        for (uint32_t t = 0; t < T; ++t) {
            float y[D];
            double x[D];
            for (uint32_t d = 0; d < D; ++d) y[d] = kv.k[((size_t)h * T + t) * D + d], x[d] = y[d];
            nq::hadamard_forward(y, D);
            rotate_f64(x);
            for (uint32_t d = 0; d < D; ++d) run[d] += (double)y[d], ref[d] += x[d];
            if ((t + 1) % 256 == 0 || t + 1 == T)  // the end of a run: its sum joins the total
                for (uint32_t d = 0; d < D; ++d) sum[d] += run[d], run[d] = 0.0;
        }
        float m[D];
        for (uint32_t d = 0; d < D; ++d) {
            const uint16_t want = nq::f32_to_f16((float)(sum[d] / T));
            const uint16_t got = rd16(img.data() + s.k_mean + ((size_t)h * D + d) * 2);
            ASSERT_EQ(got, want) << "head " << h << " dim " << d;
            m[d] = nq::f16_to_f32(got);
            // Against float64 ground truth: within fp16 rounding (and float32 rotation).
            const double truth = ref[d] / T;
            EXPECT_NEAR(m[d], truth, std::fabs(truth) * 1.0e-3 + 1e-3) << "head " << h << " dim " << d;
        }
        for (uint32_t t = 0; t < T; ++t) {
            float y[D];
            for (uint32_t d = 0; d < D; ++d) y[d] = kv.k[((size_t)h * T + t) * D + d];
            nq::hadamard_forward(y, D);
            for (uint32_t d = 0; d < D; ++d) y[d] = y[d] - m[d];
            uint16_t scale = 0;
            ASSERT_TRUE(nq::vector_scale(y, D, NQ_CODEC_E8, 3, &scale));
            const size_t c = (size_t)h * T + t;
            ASSERT_EQ(rd16(img.data() + s.k_scales + c * 2), scale) << "head " << h << " token " << t;
            uint8_t codes[D * 3 / 8];
            nq::encode_rotated(y, D, NQ_CODEC_E8, 3, scale, codes);
            ASSERT_EQ(std::memcmp(codes, img.data() + s.k_codes + c * (D * 3 / 8), sizeof codes), 0)
                << "head " << h << " token " << t;
            float r[D];
            nq::decode_rotated(codes, D, NQ_CODEC_E8, 3, scale, r);
            for (uint32_t d = 0; d < D; ++d) r[d] = r[d] + m[d];
            nq::hadamard_inverse(r, D);
            for (uint32_t d = 0; d < D; ++d)
                ASSERT_EQ(dk[c * D + d], r[d]) << "decoded key, head " << h << " token " << t << " dim " << d;
        }
    }
}

// What centring is for: with a large per-channel key offset, 3-bit keys lose the
// per-token part under the offset's scale; centred, the error drops by far.
TEST(KeyCentering, ShrinksTheErrorOfBiasedKeys) {
    for (uint32_t bits : {2u, 3u, 4u}) {
        KV kv = make_kv(3 + bits);
        Ctx off = make(config(0, NQ_ISA_AUTO, 1, bits)), on = make(config(1, NQ_ISA_AUTO, 1, bits));
        Block a = compress(off.get(), kv), b = compress(on.get(), kv);
        std::vector<float> ka, va, kb, vb;
        decode(off.get(), a.get(), T, &ka, &va);
        decode(on.get(), b.get(), T, &kb, &vb);
        // Error relative to the per-token part (key minus its float64 per-head mean).
        std::vector<float> resid(kv.k.size()), ea(kv.k.size()), eb(kv.k.size());
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t d = 0; d < D; ++d) {
                double m = 0;
                for (uint32_t t = 0; t < T; ++t) m += kv.k[((size_t)h * T + t) * D + d];
                m /= T;
                for (uint32_t t = 0; t < T; ++t) {
                    const size_t i = ((size_t)h * T + t) * D + d;
                    resid[i] = (float)(kv.k[i] - m);
                    ea[i] = (float)(ka[i] - m);
                    eb[i] = (float)(kb[i] - m);
                }
            }
        const double err_off = rel_err(ea, resid), err_on = rel_err(eb, resid);
        std::printf("[key centering] K%u: error of the per-token part %.4f uncentred, %.4f centred\n", bits, err_off,
                    err_on);
        EXPECT_LT(err_on, 0.25 * err_off) << bits << " bits";
        EXPECT_LT(err_on, 0.6) << bits << " bits";
        // Values are not centred: same bytes, same decode.
        EXPECT_EQ(va, vb);
    }
}

// Centred blocks have the same bytes, and decode the same, on every instruction set and
// thread count, with RoPE removal, fp16 sinks/window and per-head eviction.
TEST(KeyCentering, SameBytesOnEveryIsa) {
    KV kv = make_kv(7);
    std::vector<uint8_t> ref;
    std::vector<float> rk, rv;
    for (nq_cpu_isa isa : {NQ_ISA_SCALAR, NQ_ISA_AVX2, NQ_ISA_AVX512})
        for (uint32_t threads : {1u, 3u}) {
            nq_config c = config(1, isa, threads);
            c.rope.mode = NQ_ROPE_REMOVE;
            c.fp16_sinks = 1;
            c.fp16_window = 2;
            c.sink_tokens = 2;
            c.recent_window = 4;
            c.evict_fraction = 0.25f;
            Ctx ctx = make(c);
            Block b = compress(ctx.get(), kv);
            ASSERT_TRUE(b);
            nq_block_info info{};
            info.size = sizeof info;
            ASSERT_EQ(nq_block_get_info(b.get(), &info), NQ_OK);
            ASSERT_LT(info.tokens_kept, T);
            std::vector<float> k, v;
            decode(ctx.get(), b.get(), info.tokens_kept, &k, &v);
            const std::vector<uint8_t> img = image(b.get());
            const std::string what = std::string(nq_context_cpu_isa(ctx.get())) + ", " + std::to_string(threads) + " thread(s)";
            if (ref.empty()) {
                ref = img, rk = k, rv = v;
                continue;
            }
            EXPECT_TRUE(img == ref) << what << ": other bytes";
            EXPECT_TRUE(k == rk && v == rv) << what << ": other decode";
        }
}

TEST(KeyCentering, NoCodedTokensStoresZeros) {
    KV kv = make_kv(8);
    nq_config c = config(1);
    c.fp16_window = T;  // every token fp16: no coded token
    c.recent_window = T;
    Ctx ctx = make(c);
    Block b = compress(ctx.get(), kv);
    const std::vector<uint8_t> img = image(b.get());
    nq_block_info info{};
    info.size = sizeof info;
    ASSERT_EQ(nq_block_get_info(b.get(), &info), NQ_OK);
    ASSERT_EQ(info.key_mean_bytes, (uint64_t)H * D * 2);
    const size_t at = img.size() - H * D * 2;  // the last section; H*D*2 is a multiple of 16
    for (size_t i = 0; i < H * D * 2; ++i) ASSERT_EQ(img[at + i], 0) << i;
    std::vector<float> k, v;
    decode(ctx.get(), b.get(), T, &k, &v);
    for (size_t i = 0; i < k.size(); ++i) ASSERT_EQ(k[i], nq::f16_to_f32(nq::f32_to_f16(kv.k[i]))) << i;
}

TEST(KeyCentering, ArchiveRoundTrip) {
    KV kv = make_kv(9);
    for (int level : {-1, 3}) {
        nq_config c = config(1);
        c.archive_zstd_level = level;
        Ctx ctx = make(c);
        Block b = compress(ctx.get(), kv);
        size_t cap = 0, n = 0;
        ASSERT_EQ(nq_block_serialize_bound(b.get(), &cap), NQ_OK);
        std::vector<uint8_t> ar(cap);
        ASSERT_EQ(nq_block_serialize(ctx.get(), b.get(), ar.data(), cap, &n), NQ_OK) << nq_last_error();
        ar.resize(n);
        // The section table lists id 7 (k_mean) last.
        const uint16_t entries = rd16(ar.data() + 6);
        ASSERT_GE(entries, 1u);
        EXPECT_EQ(ar[16 + 128 + 24 * (entries - 1)], 7);
        nq_block *back = nullptr;
        ASSERT_EQ(nq_block_deserialize(ctx.get(), ar.data(), ar.size(), &back), NQ_OK) << nq_last_error();
        Block bb(back);
        EXPECT_TRUE(image(b.get()) == image(bb.get()));
        std::vector<float> k1, v1, k2, v2;
        decode(ctx.get(), b.get(), T, &k1, &v1);
        decode(ctx.get(), bb.get(), T, &k2, &v2);
        EXPECT_TRUE(k1 == k2 && v1 == v2);
        // A flipped flag bit is caught: the geometry no longer matches the archive.
        std::vector<uint8_t> bad = ar;
        bad[16 + 8] &= (uint8_t)~8u;
        nq_block *x = nullptr;
        EXPECT_NE(nq_block_deserialize(ctx.get(), bad.data(), bad.size(), &x), NQ_OK);
        EXPECT_EQ(x, nullptr);
    }
}

// CPU attention over centred blocks (two blocks of one sequence, RoPE removed or kept
// (the fast path: the mean as one logit offset per query), fp16 sinks and window, GQA,
// a causal mask) against float64 attention over what nq_decode
// returns, on every instruction set. Without the mean in the logits the result would be
// far off: the keys' offset dominates them.
TEST(KeyCentering, AttentionMatchesFloat64OverDecodedBlocks) {
    constexpr uint32_t G = 3, Q = 2;  // query heads per KV head, query tokens
    KV kv1 = make_kv(11, 3.0f), kv2 = make_kv(12, 3.0f);
    for (uint32_t t = 0; t < T; ++t) kv2.pos[t] = kv1.pos[T - 1] + 1 + t;
    std::mt19937 rng(13);
    std::normal_distribution<float> n(0.0f, 1.0f);
    std::vector<float> q((size_t)Q * H * G * D);
    for (float &x : q) x = 0.3f * n(rng);
    const int64_t qpos[Q] = {kv2.pos[T / 2], kv2.pos[T - 1]};
    for (nq_rope_mode rope : {NQ_ROPE_REMOVE, NQ_ROPE_KEEP})
    for (nq_cpu_isa isa : {NQ_ISA_SCALAR, NQ_ISA_AVX2, NQ_ISA_AVX512}) {
        nq_config c = config(1, isa, 2);
        c.num_q_heads = H * G;
        c.rope.mode = rope;
        c.fp16_sinks = 1;
        c.sink_tokens = 1;
        c.fp16_window = 3;
        c.recent_window = 3;
        Ctx ctx = make(c);
        Block b1 = compress(ctx.get(), kv1), b2 = compress(ctx.get(), kv2);
        // Decoded keys/values and positions of both blocks: the float64 reference.
        std::vector<float> k[2], v[2];
        decode(ctx.get(), b1.get(), T, &k[0], &v[0]);
        decode(ctx.get(), b2.get(), T, &k[1], &v[1]);
        const int64_t *pos[2] = {kv1.pos.data(), kv2.pos.data()};
        const void *images[2];
        size_t bytes = 0;
        ASSERT_EQ(nq_block_data(b1.get(), &images[0], &bytes), NQ_OK);
        ASSERT_EQ(nq_block_data(b2.get(), &images[1], &bytes), NQ_OK);
        const uint32_t indptr[2] = {0, 2};
        std::vector<float> out(q.size(), -7.0f);
        nq_attention_desc d;
        nq_attention_desc_init(&d);
        d.memory = NQ_MEMORY_HOST;
        d.num_seqs = 1;
        d.q_tokens = Q;
        d.dtype = NQ_DTYPE_F32;
        d.block_images = images;
        d.block_indptr = indptr;
        d.q = q.data();
        d.out = out.data();
        d.q_positions = qpos;
        ASSERT_EQ(nq_attention_decode(ctx.get(), &d, nullptr, 0, nullptr), NQ_OK) << nq_last_error();
        const double scale = 1.0 / std::sqrt((double)D);
        double worst = 0;
        for (uint32_t i = 0; i < Q; ++i)
            for (uint32_t qh = 0; qh < H * G; ++qh) {
                const uint32_t h = qh / G;
                const float *qr = &q[((size_t)i * H * G + qh) * D];
                std::vector<double> logit, acc(D, 0.0);
                double mx = -INFINITY;
                for (int blk = 0; blk < 2; ++blk)
                    for (uint32_t t = 0; t < T; ++t) {
                        if (pos[blk][t] > qpos[i]) continue;
                        double l = 0;
                        for (uint32_t e = 0; e < D; ++e) l += (double)qr[e] * k[blk][((size_t)h * T + t) * D + e];
                        logit.push_back(l * scale);
                        mx = std::max(mx, l * scale);
                    }
                double sum = 0;
                size_t at = 0;
                for (int blk = 0; blk < 2; ++blk)
                    for (uint32_t t = 0; t < T; ++t) {
                        if (pos[blk][t] > qpos[i]) continue;
                        const double w = std::exp(logit[at++] - mx);
                        sum += w;
                        for (uint32_t e = 0; e < D; ++e) acc[e] += w * v[blk][((size_t)h * T + t) * D + e];
                    }
                for (uint32_t e = 0; e < D; ++e) {
                    const double want = acc[e] / sum, got = out[((size_t)i * H * G + qh) * D + e];
                    worst = std::max(worst, std::fabs(got - want));
                }
            }
        EXPECT_LT(worst, 2e-4) << nq_context_cpu_isa(ctx.get()) << ", rope mode " << (int)rope;
        std::printf("[key centering] attention on %s, rope mode %d: largest difference to float64 %.2e\n",
                    nq_context_cpu_isa(ctx.get()), (int)rope, worst);
    }
}
