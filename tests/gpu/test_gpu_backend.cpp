// The GPU backend against the CPU scalar reference: identical resident bytes (digests
// after copying to host) and identical decoded bytes, for every preset, dtype and
// layout; poisoned destinations; ragged batches; device and host scores; graph
// capture; blocks moving between host and device. Skipped without a CUDA device.
#include "gpu_test_util.h"

#include "api/internal.h"

using namespace nqt;

namespace {

#if defined(NQ_GPU_SIM)
constexpr uint32_t kDim = 64, kHeads = 2, kTokens = 45;
#else
constexpr uint32_t kDim = 128, kHeads = 4, kTokens = 301;
#endif

const char *section_of(const nq_block *b, size_t off) {
    static const char *names[] = {"positions", "k_scales", "v_scales", "k_codes", "v_codes", "k_fp16", "v_fp16", "k_mean"};
    static_assert(sizeof names / sizeof names[0] == nq::kNumSections, "a name per section");
    if (off < nq::kHeaderBytes) return "header";
    const char *s = "padding";
    for (int i = 0; i < nq::kNumSections; ++i)
        if (off >= b->g.offset[i] && off < b->g.offset[i] + b->g.length[i]) s = names[i];
    return s;
}

// Copies a device block to host (waiting for the stream) and checks it byte for byte
// against the CPU's.
void expect_same_block(nq_context *ctx, const nq_block *cpu, const nq_block *gpu, const std::string &what) {
    nq_block *host = nullptr;
    ASSERT_EQ(nq_block_copy(ctx, gpu, NQ_MEMORY_HOST, 0, nullptr, 0, nullptr, &host), NQ_OK) << nq_last_error();
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    uint64_t a = 0, b = 0;
    ASSERT_EQ(nq_block_digest(cpu, &a), NQ_OK);
    ASSERT_EQ(nq_block_digest(host, &b), NQ_OK);
    if (a != b) {
        const uint8_t *x = cpu->data, *y = host->data;
        size_t n = std::min(cpu->g.total, host->g.total), first = n, count = 0;
        for (size_t i = 0; i < n; ++i)
            if (x[i] != y[i]) {
                if (first == n) first = i;
                ++count;
            }
        ADD_FAILURE() << what << ": blocks differ (" << cpu->g.total << " vs " << host->g.total << " bytes, " << count
                      << " bytes differ, first at " << first << " in " << section_of(cpu, first) << ": cpu "
                      << (int)(first < n ? x[first] : -1) << " gpu " << (int)(first < n ? y[first] : -1) << ")";
    }
    nq_block_free(host);
}

struct Case {
    nq_preset preset;
    nq_dtype dtype;
    Kind kind;
};

std::string case_name(const Case &c) {
    std::string s = nq_preset_name(c.preset);
    s += c.dtype == NQ_DTYPE_F16 ? "_f16_" : c.dtype == NQ_DTYPE_BF16 ? "_bf16_" : "_f32_";
    return s + kind_name(c.kind);
}

struct Pair {
    Tensor k, v;
    DevBuf dk, dv;
};

void make_pair(Pair &p, Kind kind, nq_dtype dt, uint32_t H, uint32_t T, uint32_t D, std::mt19937 &rng, bool random) {
    p.k.make(kind, H, T, D, elem_bytes(dt), rng);
    p.v.make(kind, H, T, D, elem_bytes(dt), rng);
    if (random) {
        fill_random(p.k, dt, H, T, D, rng, true);
        fill_random(p.v, dt, H, T, D, rng, false);
    }
    p.dk.alloc(p.k.host.size());
    p.dv.alloc(p.v.host.size());
}

nq_kv_desc desc(Pair &p, nq_dtype dt, uint32_t T, bool device) {
    nq_kv_desc kv;
    nq_kv_desc_init(&kv);
    kv.dtype = dt;
    kv.num_tokens = T;
    kv.memory = device ? NQ_MEMORY_CUDA : NQ_MEMORY_HOST;
    kv.k = device ? p.dk.p : p.k.host.data();
    kv.v = device ? p.dv.p : p.v.host.data();
    kv.k_layout = p.k.layout;
    kv.v_layout = p.v.layout;
    return kv;
}

nq_config base_config(uint32_t D, uint32_t H, nq_preset preset) {
    nq_config c;
    nq_config_init(&c);
    c.head_dim = D;
    c.num_kv_heads = H;
    c.preset = preset;
    return c;
}

// Host scores [H][T] given for eviction (token stride 1).
nq_score_desc given_scores(const std::vector<float> &s, uint32_t T) {
    nq_score_desc d;
    nq_score_desc_init(&d);
    d.kind = NQ_SCORES_GIVEN;
    d.scores = s.data();
    d.score_stride_head = T;
    d.score_stride_token = 1;
    return d;
}

// Compresses the same K/V on the CPU and the GPU, compares blocks, then decodes the CPU
// block (copied to the device) on the GPU and on the CPU into poisoned outputs of the
// same layout kind and compares every byte.
void run_case(const nq_config &cfg, nq_dtype dt, Kind kind, uint32_t T, uint32_t seed, const std::string &what,
              const nq_score_desc *host_sc = nullptr, const nq_score_desc *dev_sc = nullptr) {
    std::mt19937 rng(seed);
    const uint32_t H = cfg.num_kv_heads, D = cfg.head_dim;
    nq_context *ctx = nullptr;
    ASSERT_EQ(nq_context_create(&cfg, &ctx), NQ_OK) << nq_last_error();
    Pair in;
    make_pair(in, kind, dt, H, T, D, rng, true);
    NQT_CUDA(cudaMemcpy(in.dk.p, in.k.host.data(), in.k.host.size(), cudaMemcpyHostToDevice));
    NQT_CUDA(cudaMemcpy(in.dv.p, in.v.host.data(), in.v.host.size(), cudaMemcpyHostToDevice));
    nq_kv_desc hkv = desc(in, dt, T, false), dkv = desc(in, dt, T, true);
    hkv.start_position = dkv.start_position = 7;

    nq_block *cpu = nullptr, *gpu = nullptr;
    ASSERT_EQ(nq_compress_kv(ctx, &hkv, host_sc, nullptr, &cpu), NQ_OK) << what << ": " << nq_last_error();
    ASSERT_EQ(nq_compress_kv(ctx, &dkv, dev_sc ? dev_sc : host_sc, nullptr, &gpu), NQ_OK)
        << what << ": " << nq_last_error();
    nq_block_info info;
    info.size = sizeof info;
    ASSERT_EQ(nq_block_get_info(gpu, &info), NQ_OK);
    EXPECT_EQ(info.memory, NQ_MEMORY_CUDA);
    expect_same_block(ctx, cpu, gpu, what);

    // Decode: the CPU's block moved to the device, against the CPU decode of it.
    nq_block *moved = nullptr;
    ASSERT_EQ(nq_block_copy(ctx, cpu, NQ_MEMORY_CUDA, 0, nullptr, 0, nullptr, &moved), NQ_OK) << nq_last_error();
    const uint32_t K = cpu->h.tokens_kept;
    for (nq_dtype odt : {NQ_DTYPE_F16, NQ_DTYPE_BF16, NQ_DTYPE_F32}) {
        Pair out;
        make_pair(out, kind, odt, H, K, D, rng, false);
        std::fill(out.k.host.begin(), out.k.host.end(), 0xff);  // NaN in every dtype
        std::fill(out.v.host.begin(), out.v.host.end(), 0xff);
        NQT_CUDA(cudaMemcpy(out.dk.p, out.k.host.data(), out.k.host.size(), cudaMemcpyHostToDevice));
        NQT_CUDA(cudaMemcpy(out.dv.p, out.v.host.data(), out.v.host.size(), cudaMemcpyHostToDevice));
        nq_kv_desc ho = desc(out, odt, K, false), dout = desc(out, odt, K, true);
        ASSERT_EQ(nq_decode(ctx, cpu, 0, K, &ho, nullptr), NQ_OK) << nq_last_error();
        ASSERT_EQ(nq_decode(ctx, moved, 0, K, &dout, nullptr), NQ_OK) << what << ": " << nq_last_error();
        std::vector<uint8_t> gk(out.k.host.size()), gv(out.v.host.size());
        NQT_CUDA(cudaMemcpy(gk.data(), out.dk.p, gk.size(), cudaMemcpyDeviceToHost));
        NQT_CUDA(cudaMemcpy(gv.data(), out.dv.p, gv.size(), cudaMemcpyDeviceToHost));
        const uint32_t eb = elem_bytes(odt);
        size_t unwritten = 0, diff = 0, first = SIZE_MAX;
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t t = 0; t < K; ++t)
                for (uint32_t d = 0; d < D; ++d) {
                    const size_t o = out.k.offset(h, t, d) * eb, ov = out.v.offset(h, t, d) * eb;
                    bool poison_k = true, poison_v = true;
                    for (uint32_t b = 0; b < eb; ++b) {
                        poison_k &= gk[o + b] == 0xff;
                        poison_v &= gv[ov + b] == 0xff;
                    }
                    unwritten += poison_k + poison_v;
                }
        for (size_t i = 0; i < gk.size(); ++i)
            if (gk[i] != out.k.host[i]) {
                ++diff;
                first = std::min(first, i);
            }
        for (size_t i = 0; i < gv.size(); ++i)
            if (gv[i] != out.v.host[i]) ++diff;
        EXPECT_EQ(unwritten, 0u) << what << " decode to dtype " << odt << ": elements left unwritten";
        EXPECT_EQ(diff, 0u) << what << " decode to dtype " << odt << ": bytes differ from the CPU decode (first K byte "
                            << first << ")";
    }
    nq_block_free(moved);
    nq_block_free(cpu);
    nq_block_free(gpu);
    nq_context_free(ctx);
}

class GpuEquivalence : public ::testing::TestWithParam<Case> {};

TEST_P(GpuEquivalence, MatchesCpuReference) {
    NQT_REQUIRE_DEVICE();
    const Case c = GetParam();
    nq_config cfg = base_config(kDim, kHeads, c.preset);
    run_case(cfg, c.dtype, c.kind, kTokens, 1234 + (uint32_t)c.preset * 7 + (uint32_t)c.kind, case_name(c));
}

std::vector<Case> all_cases() {
    std::vector<Case> v;
    for (nq_preset p : {NQ_PRESET_LOSSLESS, NQ_PRESET_HIGH, NQ_PRESET_BALANCED, NQ_PRESET_MAX, NQ_PRESET_S,
                        NQ_PRESET_M, NQ_PRESET_L, NQ_PRESET_XL})
        for (nq_dtype d : {NQ_DTYPE_F16, NQ_DTYPE_BF16, NQ_DTYPE_F32})
            for (Kind k : {Kind::Strided, Kind::Transposed, Kind::PagedNHD, Kind::PagedHND}) v.push_back({p, d, k});
    return v;
}

INSTANTIATE_TEST_SUITE_P(AllPresets, GpuEquivalence, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case> &i) { return case_name(i.param); });

TEST(GpuEquivalenceExtra, HeadDims) {
    NQT_REQUIRE_DEVICE();
    for (uint32_t D : {8u, 24u, 64u, 96u, 128u, 256u, 320u, 512u}) {
        nq_config cfg = base_config(D, 2, NQ_PRESET_LOSSLESS);
        run_case(cfg, NQ_DTYPE_F16, Kind::Strided, 40, 99 + D, "head_dim " + std::to_string(D));
    }
}

TEST(GpuEquivalenceExtra, RopeVariantsAndCodecs) {
    NQT_REQUIRE_DEVICE();
    int i = 0;
    for (int variant = 0; variant < 6; ++variant) {
        nq_config cfg = base_config(kDim, 2, NQ_PRESET_LOSSLESS);
        std::string what = "rope variant " + std::to_string(variant);
        switch (variant) {
        case 0: cfg.rope.mode = NQ_ROPE_NONE; break;
        case 1: cfg.rope.mode = NQ_ROPE_KEEP; break;
        case 2:
            cfg.rope.pairing = NQ_ROPE_INTERLEAVED;
            cfg.rope.rotary_dims = kDim / 2;
            break;
        case 3:
            cfg.rope.scaling = NQ_ROPE_SCALING_YARN;
            cfg.rope.factor = 4.0;
            cfg.rope.original_max_position = 32;
            break;
        case 4:
            cfg.rope.scaling = NQ_ROPE_SCALING_LLAMA3;
            cfg.rope.factor = 8.0;
            cfg.rope.original_max_position = 16;
            cfg.codec = NQ_CODEC_SCALAR;
            break;
        case 5:
            cfg.k_bits = 8;
            cfg.v_bits = 1;
            cfg.rope.rotary_dims = 24;
            break;
        }
        run_case(cfg, NQ_DTYPE_BF16, Kind::Transposed, 50, 500 + i++, what);
    }
}

TEST(GpuEquivalenceExtra, GivenScoresHostAndDevice) {
    NQT_REQUIRE_DEVICE();
    const uint32_t H = kHeads, T = kTokens;
    std::mt19937 rng(77);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> s((size_t)H * T);
    for (auto &x : s) x = std::round(u(rng) * 8.0f) / 8.0f;  // many ties
    s[3] = NAN;
    s[T + 5] = -0.0f;
    s[T + 6] = 0.0f;
    DevBuf ds(s.size() * 4);
    NQT_CUDA(cudaMemcpy(ds.p, s.data(), s.size() * 4, cudaMemcpyHostToDevice));
    for (nq_evict_mode mode : {NQ_EVICT_PER_HEAD, NQ_EVICT_HEAD_SHARED, NQ_EVICT_PAGED}) {
        nq_config cfg = base_config(kDim, H, NQ_PRESET_BALANCED);
        cfg.evict_mode = mode;
        const nq_score_desc hs = given_scores(s, T);
        nq_score_desc dsd = hs;
        dsd.memory = NQ_MEMORY_CUDA;
        dsd.scores = static_cast<const float *>(ds.p);
        const std::string m = std::to_string((int)mode);
        run_case(cfg, NQ_DTYPE_F16, Kind::PagedNHD, T, 11, "host scores, mode " + m, &hs, nullptr);
        if (mode != NQ_EVICT_PAGED)
            run_case(cfg, NQ_DTYPE_F16, Kind::PagedNHD, T, 11, "device scores, mode " + m, &hs, &dsd);
    }
}

// Eviction ranked by the attention of observation-window queries (GQA: two query heads
// per KV head), queries in device memory for the GPU and host memory for the CPU.
TEST(GpuEquivalenceExtra, QueryScores) {
    NQT_REQUIRE_DEVICE();
    const uint32_t H = kHeads, Hq = 2 * kHeads, W = 8, D = kDim;
    std::mt19937 rng(21);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<uint16_t> q((size_t)Hq * W * D);
    for (auto &x : q) x = nq::f32_to_f16(nd(rng) * 2.0f);
    DevBuf dq(q.size() * 2);
    NQT_CUDA(cudaMemcpy(dq.p, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
    std::vector<int64_t> qpos = {9, 20, 33, 40, 41, 42, 1000, 43};
    for (int variant = 0; variant < 3; ++variant) {
        nq_config cfg = base_config(D, H, NQ_PRESET_BALANCED);
        cfg.num_q_heads = Hq;
        cfg.evict_mode = variant == 1 ? NQ_EVICT_HEAD_SHARED : NQ_EVICT_PER_HEAD;
        // Host queries let a preset choose its bits from the data (src/plan/bit_choice.h);
        // the device path keeps the nominal bits, so the equivalence is checked at fixed bits.
        cfg.k_bits = 3;
        cfg.v_bits = 2;
        nq_score_desc hs;
        nq_score_desc_init(&hs);
        hs.kind = NQ_SCORES_QUERIES;
        hs.queries = q.data();
        hs.query_dtype = NQ_DTYPE_F16;
        hs.num_queries = W;
        hs.q_stride_head = (int64_t)W * D;
        hs.q_stride_token = D;
        if (variant == 2) {
            hs.query_positions = qpos.data();
            hs.pool_kernel = 3;
        }
        nq_score_desc ds = hs;
        ds.memory = NQ_MEMORY_CUDA;
        ds.queries = dq.p;
        run_case(cfg, NQ_DTYPE_BF16, Kind::Strided, kTokens, 31 + variant, "query scores variant " + std::to_string(variant),
                 &hs, &ds);
    }
}

// Key centering (FORMAT.md 1.8): the device's mean (float64 sums over runs of 256 coded
// slots in slot order, then over the runs in order) and the codes of the keys minus it are the CPU
// reference's bytes; the CPU's centred block moved to the device decodes as on the CPU.
nq_config centred_config(uint32_t D, uint32_t H, nq_preset preset) {
    nq_config c = base_config(D, H, preset);
    c.key_centering = 1;
    c.fp16_sinks = 10;  // run_case's positions start at 7: 3 sink tokens
    c.fp16_window = 5;
    return c;
}

TEST(GpuKeyCentering, RopeModesAndDtypes) {
    NQT_REQUIRE_DEVICE();
    uint32_t seed = 700;
    for (nq_rope_mode mode : {NQ_ROPE_REMOVE, NQ_ROPE_KEEP, NQ_ROPE_NONE})
        for (nq_dtype dt : {NQ_DTYPE_F16, NQ_DTYPE_BF16, NQ_DTYPE_F32}) {
            nq_config cfg = centred_config(kDim, 3, NQ_PRESET_LOSSLESS);
            cfg.rope.mode = mode;
            const Kind kind = seed % 2 ? Kind::PagedHND : Kind::Transposed;
            run_case(cfg, dt, kind, kTokens, seed++,
                     "centred, rope mode " + std::to_string((int)mode) + ", dtype " + std::to_string((int)dt));
        }
}

// Several chunks and runs of slots per head (the kernel sums a chunk at a time), head dims that
// take 4, 8 and 32 lanes of 8 or 16 floats, interleaved partial RoPE, the scalar codec.
TEST(GpuKeyCentering, LongBlocksAndHeadDims) {
    NQT_REQUIRE_DEVICE();
    // Coded slots: 142, 72, 32; a chunk holds 128, 64, 8 of them.
    const uint32_t dims[] = {24, 64, 320}, tokens[] = {150, 80, 40};
    for (int i = 0; i < 3; ++i) {
        nq_config cfg = centred_config(dims[i], 2, NQ_PRESET_LOSSLESS);
        run_case(cfg, NQ_DTYPE_BF16, Kind::Strided, tokens[i], 800 + dims[i],
                 "centred, " + std::to_string(tokens[i]) + " tokens, head_dim " + std::to_string(dims[i]));
    }
    nq_config cfg = centred_config(kDim, 2, NQ_PRESET_LOSSLESS);
    cfg.rope.pairing = NQ_ROPE_INTERLEAVED;
    cfg.rope.rotary_dims = kDim / 2;
    cfg.codec = NQ_CODEC_SCALAR;
    run_case(cfg, NQ_DTYPE_F16, Kind::PagedNHD, 90, 901, "centred, interleaved partial RoPE, scalar codec");
    // Several key-mean runs per head (256 coded slots each, the last one partial).
    nq_config runs = centred_config(kDim, 3, NQ_PRESET_LOSSLESS);
    run_case(runs, NQ_DTYPE_F16, Kind::Strided, 700, 902, "centred, 700 tokens: three key-mean runs");
}

// Eviction: the mean is over each head's kept coded slots, chosen on the device
// (key norms) or on the host (given scores), per head, head-shared or by pages.
TEST(GpuKeyCentering, EvictedBlocks) {
    NQT_REQUIRE_DEVICE();
    const uint32_t H = 3, T = kTokens + 20;
    std::mt19937 rng(41);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> s((size_t)H * T);
    for (auto &x : s) x = u(rng);
    const nq_score_desc hs = given_scores(s, T);
    for (nq_evict_mode mode : {NQ_EVICT_PER_HEAD, NQ_EVICT_HEAD_SHARED, NQ_EVICT_PAGED}) {
        nq_config cfg = centred_config(kDim, H, NQ_PRESET_BALANCED);
        cfg.evict_mode = mode;
        const std::string m = std::to_string((int)mode);
        if (mode != NQ_EVICT_PAGED)  // paged eviction ranks host scores only
            run_case(cfg, NQ_DTYPE_F16, Kind::PagedNHD, T, 51, "centred, key-norm eviction, mode " + m);
        run_case(cfg, NQ_DTYPE_BF16, Kind::Strided, T, 52, "centred, host scores, mode " + m, &hs, nullptr);
    }
}

// No coded token (every kept token is a sink or in the fp16 window): the mean is zeros.
TEST(GpuKeyCentering, NoCodedTokens) {
    NQT_REQUIRE_DEVICE();
    for (uint32_t T : {1u, 8u}) {  // 1 sink; 3 sinks and the 5-token window
        nq_config cfg = centred_config(kDim, 2, NQ_PRESET_LOSSLESS);
        run_case(cfg, NQ_DTYPE_F16, Kind::Strided, T, 60 + T, "centred, " + std::to_string(T) + " tokens, none coded");
        // The case is what it says: no coded slot, a zero mean.
        nq_context *ctx = nullptr;
        ASSERT_EQ(nq_context_create(&cfg, &ctx), NQ_OK) << nq_last_error();
        std::mt19937 rng(T);
        Pair in;
        make_pair(in, Kind::Strided, NQ_DTYPE_F16, 2, T, kDim, rng, true);
        nq_kv_desc hkv = desc(in, NQ_DTYPE_F16, T, false);
        hkv.start_position = 7;
        nq_block *b = nullptr;
        ASSERT_EQ(nq_compress_kv(ctx, &hkv, nullptr, nullptr, &b), NQ_OK) << nq_last_error();
        EXPECT_EQ(b->g.coded, 0u);
        EXPECT_EQ(b->g.length[nq::kSecKMean], 2u * kDim * 2);
        for (uint64_t i = 0; i < b->g.length[nq::kSecKMean]; ++i) EXPECT_EQ(b->data[b->g.offset[nq::kSecKMean] + i], 0);
        nq_block_free(b);
        nq_context_free(ctx);
    }
}

// A context bound to the GPU backend takes key centering, and the block records it.
TEST(GpuKeyCentering, CudaContext) {
    NQT_REQUIRE_DEVICE();
    nq_config cfg = centred_config(kDim, kHeads, NQ_PRESET_LOSSLESS);
    cfg.backend = NQ_BACKEND_CUDA;
    nq_context *ctx = nullptr;
    ASSERT_EQ(nq_context_create(&cfg, &ctx), NQ_OK) << nq_last_error();
    std::mt19937 rng(8);
    Pair in;
    make_pair(in, Kind::Strided, NQ_DTYPE_F16, kHeads, kTokens, kDim, rng, true);
    NQT_CUDA(cudaMemcpy(in.dk.p, in.k.host.data(), in.k.host.size(), cudaMemcpyHostToDevice));
    NQT_CUDA(cudaMemcpy(in.dv.p, in.v.host.data(), in.v.host.size(), cudaMemcpyHostToDevice));
    nq_kv_desc dkv = desc(in, NQ_DTYPE_F16, kTokens, true);
    nq_block *b = nullptr;
    ASSERT_EQ(nq_compress_kv(ctx, &dkv, nullptr, nullptr, &b), NQ_OK) << nq_last_error();
    nq_block_info info;
    info.size = sizeof info;
    ASSERT_EQ(nq_block_get_info(b, &info), NQ_OK);
    EXPECT_EQ(info.memory, NQ_MEMORY_CUDA);
    EXPECT_EQ(info.key_mean_bytes, (uint64_t)kHeads * kDim * 2);
    nq_block_free(b);
    nq_context_free(ctx);
}

// A ragged batch with caller buffers and workspace, several layers (per-layer bits);
// `centred`: key centering, items without coded tokens among them.
void ragged_batch(bool centred) {
    nq_layer_override ov{1, 2, 4, 4, -1.0f, 0};
    nq_config cfg = base_config(kDim, kHeads, NQ_PRESET_HIGH);
    cfg.overrides = &ov;
    cfg.num_overrides = 1;
    cfg.key_centering = centred ? 1u : 0u;
    if (centred) cfg.fp16_window = 4;  // coded slots in every item longer than sinks + window
    nq_context *ctx = nullptr;
    ASSERT_EQ(nq_context_create(&cfg, &ctx), NQ_OK) << nq_last_error();
    std::mt19937 rng(5);
    const uint32_t lens[] = {kTokens, 17, 1, kTokens / 2 + 3};
    const size_t n = 4;
    std::vector<Pair> pairs(n);
    std::vector<nq_kv_desc> hk(n), dk(n);
    std::vector<int64_t> custom(lens[3]);
    for (uint32_t i = 0; i < lens[3]; ++i) custom[i] = 100 + 3 * i;  // non-contiguous positions
    for (size_t i = 0; i < n; ++i) {
        make_pair(pairs[i], i % 2 ? Kind::PagedHND : Kind::Strided, NQ_DTYPE_F16, kHeads, lens[i], kDim, rng, true);
        NQT_CUDA(cudaMemcpy(pairs[i].dk.p, pairs[i].k.host.data(), pairs[i].k.host.size(), cudaMemcpyHostToDevice));
        NQT_CUDA(cudaMemcpy(pairs[i].dv.p, pairs[i].v.host.data(), pairs[i].v.host.size(), cudaMemcpyHostToDevice));
        hk[i] = desc(pairs[i], NQ_DTYPE_F16, lens[i], false);
        dk[i] = desc(pairs[i], NQ_DTYPE_F16, lens[i], true);
        hk[i].layer = dk[i].layer = (uint32_t)i;
        if (i == 3) hk[i].positions = dk[i].positions = custom.data();
    }
    std::vector<nq_block *> cpu(n), gpu(n);
    ASSERT_EQ(nq_compress_batch(ctx, hk.data(), nullptr, n, nullptr, nullptr, 0, nullptr, cpu.data(), nullptr), NQ_OK)
        << nq_last_error();
    size_t ws_bytes = 0;
    ASSERT_EQ(nq_workspace_size(ctx, dk.data(), n, &ws_bytes), NQ_OK);
    DevBuf ws(ws_bytes);
    std::vector<DevBuf> bufs(n);
    std::vector<nq_buffer> dst(n);
    for (size_t i = 0; i < n; ++i) {
        size_t b = 0;
        ASSERT_EQ(nq_compress_bound(ctx, &dk[i], &b), NQ_OK) << nq_last_error();
        bufs[i].alloc(b);
        dst[i] = nq_buffer{bufs[i].p, b};
    }
    std::vector<nq_status> st(n, NQ_ERR_INTERNAL);
    ASSERT_EQ(nq_compress_batch(ctx, dk.data(), nullptr, n, dst.data(), ws.p, ws_bytes, nullptr, gpu.data(), st.data()),
              NQ_OK)
        << nq_last_error();
    for (size_t i = 0; i < n; ++i) {
        EXPECT_EQ(st[i], NQ_OK);
        expect_same_block(ctx, cpu[i], gpu[i], std::string(centred ? "centred " : "") + "batch item " + std::to_string(i));
        EXPECT_EQ((cpu[i]->h.flags & nq::kFlagKeyMean) != 0, centred);
        nq_block_free(cpu[i]);
        nq_block_free(gpu[i]);
    }
    nq_context_free(ctx);
}

TEST(GpuBatch, RaggedItemsOneCall) {
    NQT_REQUIRE_DEVICE();
    ragged_batch(false);
}

TEST(GpuBatch, RaggedItemsOneCallKeyCentred) {
    NQT_REQUIRE_DEVICE();
    ragged_batch(true);
}

// Device block -> host (on a stream) -> archive -> back -> device: nothing changes.
void archive_round_trip(bool centred) {
    nq_config cfg = base_config(kDim, kHeads, NQ_PRESET_BALANCED);
    cfg.key_centering = centred ? 1u : 0u;
    nq_context *ctx = nullptr;
    ASSERT_EQ(nq_context_create(&cfg, &ctx), NQ_OK);
    std::mt19937 rng(9);
    Pair in;
    make_pair(in, Kind::PagedNHD, NQ_DTYPE_BF16, kHeads, kTokens, kDim, rng, true);
    NQT_CUDA(cudaMemcpy(in.dk.p, in.k.host.data(), in.k.host.size(), cudaMemcpyHostToDevice));
    NQT_CUDA(cudaMemcpy(in.dv.p, in.v.host.data(), in.v.host.size(), cudaMemcpyHostToDevice));
    nq_kv_desc dkv = desc(in, NQ_DTYPE_BF16, kTokens, true);
    cudaStream_t s;
    NQT_CUDA(cudaStreamCreate(&s));
    nq_block *gpu = nullptr, *host = nullptr, *back = nullptr, *again = nullptr;
    ASSERT_EQ(nq_compress_kv(ctx, &dkv, nullptr, s, &gpu), NQ_OK) << nq_last_error();
    ASSERT_EQ(nq_block_copy(ctx, gpu, NQ_MEMORY_HOST, 0, nullptr, 0, s, &host), NQ_OK) << nq_last_error();
    NQT_CUDA(cudaStreamSynchronize(s));
    size_t cap = 0, written = 0;
    ASSERT_EQ(nq_block_serialize_bound(host, &cap), NQ_OK);
    std::vector<uint8_t> arch(cap);
    ASSERT_EQ(nq_block_serialize(ctx, host, arch.data(), cap, &written), NQ_OK) << nq_last_error();
    ASSERT_EQ(nq_block_deserialize(ctx, arch.data(), written, &back), NQ_OK) << nq_last_error();
    ASSERT_EQ(nq_block_copy(ctx, back, NQ_MEMORY_CUDA, 0, nullptr, 0, s, &again), NQ_OK) << nq_last_error();
    expect_same_block(ctx, back, again, "archive round trip");
    uint64_t a, b;
    ASSERT_EQ(nq_block_digest(host, &a), NQ_OK);
    ASSERT_EQ(nq_block_digest(back, &b), NQ_OK);
    EXPECT_EQ(a, b);
    EXPECT_EQ(nq_block_digest(gpu, &a), NQ_ERR_UNSUPPORTED);
    EXPECT_EQ((host->h.flags & nq::kFlagKeyMean) != 0, centred);
    for (nq_block *x : {gpu, host, back, again}) nq_block_free(x);
    cudaStreamDestroy(s);
    nq_context_free(ctx);
}

TEST(GpuArchive, DeviceBlockRoundTrip) {
    NQT_REQUIRE_DEVICE();
    archive_round_trip(false);
}

TEST(GpuArchive, DeviceBlockRoundTripKeyCentred) {
    NQT_REQUIRE_DEVICE();
    archive_round_trip(true);
}

TEST(GpuErrors, MemoryAndBackendMismatches) {
    NQT_REQUIRE_DEVICE();
    nq_config cfg = base_config(kDim, kHeads, NQ_PRESET_LOSSLESS);
    cfg.backend = NQ_BACKEND_CUDA;
    nq_context *ctx = nullptr;
    ASSERT_EQ(nq_context_create(&cfg, &ctx), NQ_OK) << nq_last_error();
    EXPECT_EQ(nq_context_backend(ctx), NQ_BACKEND_CUDA);
    std::mt19937 rng(1);
    Pair in;
    make_pair(in, Kind::Strided, NQ_DTYPE_F16, kHeads, 20, kDim, rng, true);
    nq_kv_desc hkv = desc(in, NQ_DTYPE_F16, 20, false);
    nq_block *b = nullptr;
    EXPECT_EQ(nq_compress_kv(ctx, &hkv, nullptr, nullptr, &b), NQ_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(nq_last_error()).find("config.backend"), std::string::npos) << nq_last_error();
    nq_kv_desc dkv = desc(in, NQ_DTYPE_F16, 20, true);
    dkv.device = 4096;
    EXPECT_EQ(nq_compress_kv(ctx, &dkv, nullptr, nullptr, &b), NQ_ERR_INVALID_ARGUMENT);
    nq_context_free(ctx);
}

#if !defined(NQ_GPU_SIM)
// Compress (batch, caller buffers and workspace) and decode captured in one graph on a
// stream; replaying it reproduces the CPU's bytes.
void capture_and_replay(bool centred) {
    nq_config cfg = base_config(kDim, kHeads, NQ_PRESET_LOSSLESS);
    cfg.key_centering = centred ? 1u : 0u;
    nq_context *ctx = nullptr;
    ASSERT_EQ(nq_context_create(&cfg, &ctx), NQ_OK);
    std::mt19937 rng(3);
    Pair in, out;
    make_pair(in, Kind::PagedNHD, NQ_DTYPE_F16, kHeads, kTokens, kDim, rng, true);
    make_pair(out, Kind::PagedHND, NQ_DTYPE_F16, kHeads, kTokens, kDim, rng, false);
    NQT_CUDA(cudaMemcpy(in.dk.p, in.k.host.data(), in.k.host.size(), cudaMemcpyHostToDevice));
    NQT_CUDA(cudaMemcpy(in.dv.p, in.v.host.data(), in.v.host.size(), cudaMemcpyHostToDevice));
    nq_kv_desc hkv = desc(in, NQ_DTYPE_F16, kTokens, false), dkv = desc(in, NQ_DTYPE_F16, kTokens, true);
    nq_block *cpu = nullptr;
    ASSERT_EQ(nq_compress_kv(ctx, &hkv, nullptr, nullptr, &cpu), NQ_OK);
    size_t bound = 0, ws_bytes = 0;
    ASSERT_EQ(nq_compress_bound(ctx, &dkv, &bound), NQ_OK);
    ASSERT_EQ(nq_workspace_size(ctx, &dkv, 1, &ws_bytes), NQ_OK);
    DevBuf blockbuf(bound), ws(ws_bytes);
    nq_buffer dst{blockbuf.p, bound};
    cudaStream_t s;
    NQT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    // Warm-up outside the capture: builds the context's RoPE tables.
    nq_block *warm = nullptr;
    ASSERT_EQ(nq_compress_batch(ctx, &dkv, nullptr, 1, &dst, ws.p, ws_bytes, s, &warm, nullptr), NQ_OK);
    nq_block_free(warm);
    NQT_CUDA(cudaStreamSynchronize(s));
    NQT_CUDA(cudaMemset(blockbuf.p, 0xab, bound));

    nq_block *gpu = nullptr;
    cudaGraph_t graph;
    NQT_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    nq_status st = nq_compress_batch(ctx, &dkv, nullptr, 1, &dst, ws.p, ws_bytes, s, &gpu, nullptr);
    nq_kv_desc dout = desc(out, NQ_DTYPE_F16, kTokens, true);
    nq_status st2 = st == NQ_OK ? nq_decode(ctx, gpu, 0, kTokens, &dout, s) : st;
    NQT_CUDA(cudaStreamEndCapture(s, &graph));
    ASSERT_EQ(st, NQ_OK) << nq_last_error();
    ASSERT_EQ(st2, NQ_OK) << nq_last_error();
    cudaGraphExec_t exec;
    NQT_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    for (int rep = 0; rep < 2; ++rep) {
        NQT_CUDA(cudaMemsetAsync(blockbuf.p, 0xab, bound, s));
        NQT_CUDA(cudaMemsetAsync(out.dk.p, 0xff, out.k.host.size(), s));
        NQT_CUDA(cudaMemsetAsync(out.dv.p, 0xff, out.v.host.size(), s));
        NQT_CUDA(cudaGraphLaunch(exec, s));
        NQT_CUDA(cudaStreamSynchronize(s));
        expect_same_block(ctx, cpu, gpu, "graph replay " + std::to_string(rep));
        std::fill(out.k.host.begin(), out.k.host.end(), 0xff);
        std::fill(out.v.host.begin(), out.v.host.end(), 0xff);
        nq_kv_desc ho = desc(out, NQ_DTYPE_F16, kTokens, false);
        ASSERT_EQ(nq_decode(ctx, cpu, 0, kTokens, &ho, nullptr), NQ_OK);
        std::vector<uint8_t> gk(out.k.host.size());
        NQT_CUDA(cudaMemcpy(gk.data(), out.dk.p, gk.size(), cudaMemcpyDeviceToHost));
        EXPECT_TRUE(gk == out.k.host) << "graph replay " << rep << ": decoded keys differ";
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    nq_block_free(gpu);
    nq_block_free(cpu);
    cudaStreamDestroy(s);
    nq_context_free(ctx);
}

TEST(GpuGraph, CaptureAndReplay) {
    NQT_REQUIRE_DEVICE();
    capture_and_replay(false);
}

TEST(GpuGraph, CaptureAndReplayKeyCentred) {
    NQT_REQUIRE_DEVICE();
    capture_and_replay(true);
}
#endif

}  // namespace
