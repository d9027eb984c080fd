// GPU attention over resident blocks (gpu_attention, called with a resolved
// AttentionCall) against float64 attention over the blocks decoded on the host
// (nq_decode to f32): ragged batches of several blocks per sequence, RoPE kept, absent
// and removed, GQA ratios 1-8, head_dim 64-512, f16/bf16/f32, eviction with per-head
// positions, fp16 sinks and window, masks (causal, sliding window), soft-cap, 1 to
// more-splits-than-tokens, fully masked queries, workspace reuse and graph replay.
#include "gpu_test_util.h"

#include <cmath>

#include "api/internal.h"
#include "attention/attention.h"
#include "../../backends/cuda/gpu_backend.h"

using namespace nqt;

namespace {

struct HostBlock {
    nq_block *host = nullptr, *dev = nullptr;
    const void *image = nullptr;  // device image
    uint32_t kept = 0;
    std::vector<float> k, v;     // decoded [H][kept][D]
    std::vector<int64_t> pos;    // [H][kept]
};

struct AttnCase {
    uint32_t D = 64, H = 2, group = 4, q_tokens = 1;
    nq_preset preset = NQ_PRESET_LOSSLESS;
    nq_rope_mode rope = NQ_ROPE_KEEP;
    nq_dtype dtype = NQ_DTYPE_F16;
    int32_t fp16_sinks = 2, fp16_window = 3;
    std::vector<std::vector<uint32_t>> seqs;  // tokens per block per sequence
    uint32_t splits = 1;
    bool masks = false;      // q_positions (causal) and a sliding window
    uint32_t window = 0;
    float softcap = 0.0f;
    int64_t out_pad = 0;     // extra elements between query heads of the output
    bool graph = false;      // second run: the call captured into a CUDA graph and replayed
    bool public_api = false; // through nq_attention_decode (validation, splits, dispatch) instead
    bool key_centering = false;  // blocks with a key mean (FORMAT.md 1.8); keys get a common offset
    nq_rope_pairing pairing = NQ_ROPE_SPLIT_HALF;
    uint32_t rotary_dims = 0;    // 0: all of head_dim
    int64_t pos_base = 0;        // position of the first token of sequence 0
};

double bound_for(nq_dtype t) { return t == NQ_DTYPE_F32 ? 2e-5 : (t == NQ_DTYPE_BF16 ? 1.2e-2 : 2e-3); }

float round_to(nq_dtype t, float x) {
    if (t == NQ_DTYPE_F16) return nq::f16_to_f32(nq::f32_to_f16(x));
    if (t == NQ_DTYPE_BF16) return nq::bf16_to_f32(nq::f32_to_bf16(x));
    return x;
}

void put(std::vector<uint8_t> &buf, nq_dtype t, size_t i, float x) {
    if (t == NQ_DTYPE_F32) {
        std::memcpy(&buf[i * 4], &x, 4);
    } else {
        uint16_t u = t == NQ_DTYPE_F16 ? nq::f32_to_f16(x) : nq::f32_to_bf16(x);
        std::memcpy(&buf[i * 2], &u, 2);
    }
}
float get(const std::vector<uint8_t> &buf, nq_dtype t, size_t i) {
    if (t == NQ_DTYPE_F32) {
        float x;
        std::memcpy(&x, &buf[i * 4], 4);
        return x;
    }
    uint16_t u;
    std::memcpy(&u, &buf[i * 2], 2);
    return t == NQ_DTYPE_F16 ? nq::f16_to_f32(u) : nq::bf16_to_f32(u);
}

// Compresses random K/V of T tokens starting at `start` on the host, decodes it back
// (f32) and moves a copy to the device.
// key_offset: a per-block offset added to every key (centred blocks code keys minus
// their mean, so attention must add it back: its logit share differs between blocks).
void make_block(nq_context *ctx, uint32_t H, uint32_t D, uint32_t T, int64_t start, std::mt19937 &rng, HostBlock &b,
                float key_offset = 0.0f) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<uint16_t> k((size_t)H * T * D), v(k.size());
    for (size_t i = 0; i < k.size(); ++i) {
        const float big = (i % D) % 17 == 0 ? 4.0f : 1.0f;  // a few large channels, as keys have
        const float off = key_offset * (((i % D) * 7 + (i / ((size_t)T * D)) * 3) % 5 - 2.0f);
        k[i] = nq::f32_to_f16(nd(rng) * big + off);
        v[i] = nq::f32_to_f16(nd(rng));
    }
    nq_kv_desc kv;
    nq_kv_desc_init(&kv);
    kv.dtype = NQ_DTYPE_F16;
    kv.memory = NQ_MEMORY_HOST;
    kv.num_tokens = T;
    kv.k = k.data();
    kv.v = v.data();
    nq_layout_contiguous(&kv.k_layout, T, D);
    nq_layout_contiguous(&kv.v_layout, T, D);
    kv.start_position = start;
    ASSERT_EQ(nq_compress_kv(ctx, &kv, nullptr, nullptr, &b.host), NQ_OK) << nq_last_error();
    b.kept = b.host->h.tokens_kept;
    b.k.assign((size_t)H * b.kept * D, 0.0f);
    b.v.assign(b.k.size(), 0.0f);
    nq_kv_desc out;
    nq_kv_desc_init(&out);
    out.dtype = NQ_DTYPE_F32;
    out.memory = NQ_MEMORY_HOST;
    out.num_tokens = b.kept;
    out.k = b.k.data();
    out.v = b.v.data();
    nq_layout_contiguous(&out.k_layout, b.kept, D);
    nq_layout_contiguous(&out.v_layout, b.kept, D);
    ASSERT_EQ(nq_decode(ctx, b.host, 0, b.kept, &out, nullptr), NQ_OK) << nq_last_error();
    b.pos.assign((size_t)H * b.kept, 0);
    for (uint32_t h = 0; h < H; ++h)
        ASSERT_EQ(nq_block_positions(b.host, h, 0, b.kept, &b.pos[(size_t)h * b.kept]), NQ_OK) << nq_last_error();
    ASSERT_EQ(nq_block_copy(ctx, b.host, NQ_MEMORY_CUDA, 0, nullptr, 0, nullptr, &b.dev), NQ_OK) << nq_last_error();
    size_t bytes = 0;
    ASSERT_EQ(nq_block_data(b.dev, &b.image, &bytes), NQ_OK);
}

struct Result {
    double rel = 0.0, lse_err = 0.0;
    size_t masked_rows = 0, bad_masked = 0, unwritten = 0;
};

// Builds the batch, runs gpu_attention (twice, on one workspace, to check that the
// split counters are left ready), and compares with float64 attention.
Result run_attention(const AttnCase &S, uint32_t seed, const std::string &what) {
    Result res;
    std::mt19937 rng(seed);
    const uint32_t D = S.D, H = S.H, Hq = S.H * S.group, Q = S.q_tokens, N = (uint32_t)S.seqs.size();
    nq_config cfg;
    nq_config_init(&cfg);
    cfg.head_dim = D;
    cfg.num_kv_heads = H;
    cfg.num_q_heads = Hq;
    cfg.preset = S.preset;
    cfg.rope.mode = S.rope;
    cfg.fp16_sinks = S.fp16_sinks;
    cfg.fp16_window = S.fp16_window;
    cfg.key_centering = S.key_centering ? 1u : 0u;
    cfg.rope.pairing = S.pairing;
    cfg.rope.rotary_dims = S.rotary_dims;
    nq_context *ctx = nullptr;
    EXPECT_EQ(nq_context_create(&cfg, &ctx), NQ_OK) << nq_last_error();
    if (!ctx) return res;

    std::vector<std::vector<HostBlock>> blocks(N);
    std::vector<const void *> images;
    std::vector<uint32_t> indptr{0};
    std::vector<int64_t> last_pos(N, 0);
    for (uint32_t s = 0; s < N; ++s) {
        int64_t start = S.pos_base + 3 * s;
        for (uint32_t t : S.seqs[s]) {
            blocks[s].emplace_back();
            make_block(ctx, H, D, t, start, rng, blocks[s].back(),
                       S.key_centering ? 1.5f * (float)blocks[s].size() : 0.0f);
            if (::testing::Test::HasFatalFailure()) return res;
            images.push_back(blocks[s].back().image);
            start += t;
        }
        last_pos[s] = start - 1;
        indptr.push_back((uint32_t)images.size());
    }

    // Queries (rounded to the dtype: the reference sees exactly what the kernel reads).
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const size_t qn = (size_t)N * Q * Hq * D;
    const uint32_t eb = elem_bytes(S.dtype);
    std::vector<uint8_t> qbuf(qn * eb);
    std::vector<double> qd(qn);
    for (size_t i = 0; i < qn; ++i) {
        const float x = round_to(S.dtype, nd(rng));
        put(qbuf, S.dtype, i, x);
        qd[i] = x;
    }
    std::vector<int64_t> qpos((size_t)N * Q);
    for (uint32_t s = 0; s < N; ++s)
        for (uint32_t i = 0; i < Q; ++i) {
            // Causal positions inside the sequence; the first query of sequence 0 sees nothing.
            int64_t p = last_pos[s] - (int64_t)(Q - 1 - i) * 7;
            if (s == 0 && i == 0) p = -1;
            qpos[(size_t)s * Q + i] = p;
        }
    const int64_t o_head = D + S.out_pad, o_tok = (int64_t)Hq * o_head, o_seq = (int64_t)Q * o_tok;
    const size_t on = (size_t)N * o_seq;

    DevBuf dimages(images.size() * sizeof(void *)), dindptr(indptr.size() * 4), dq(qbuf.size()), dout(on * eb),
        dlse((size_t)N * Q * Hq * 4), dqpos(qpos.size() * 8);
    EXPECT_EQ(cudaMemcpy(dimages.p, images.data(), images.size() * sizeof(void *), cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(dindptr.p, indptr.data(), indptr.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(dq.p, qbuf.data(), qbuf.size(), cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(dqpos.p, qpos.data(), qpos.size() * 8, cudaMemcpyHostToDevice), cudaSuccess);

    nq::AttentionCall call{};
    call.memory = NQ_MEMORY_CUDA;
    call.device = 0;
    call.num_seqs = N;
    call.q_tokens = Q;
    call.dtype = S.dtype;
    call.head_dim = D;
    call.num_kv_heads = H;
    call.num_q_heads = Hq;
    call.group = S.group;
    call.block_images = static_cast<const void *const *>(dimages.p);
    call.block_indptr = static_cast<const uint32_t *>(dindptr.p);
    call.q = dq.p;
    call.q_stride_head = D;
    call.q_stride_token = (int64_t)Hq * D;
    call.q_stride_seq = (int64_t)Q * Hq * D;
    call.out = dout.p;
    call.out_stride_head = o_head;
    call.out_stride_token = o_tok;
    call.out_stride_seq = o_seq;
    call.lse = static_cast<float *>(dlse.p);
    call.q_positions = S.masks ? static_cast<const int64_t *>(dqpos.p) : nullptr;
    call.scale = (float)(1.0 / std::sqrt((double)D));
    call.softcap = S.softcap;
    call.window = S.window;
    call.num_splits = S.splits;
    const size_t ws_bytes = nq::gpu_attention_workspace_bytes(ctx, call);
    DevBuf ws(ws_bytes);
    if (ws_bytes) EXPECT_EQ(cudaMemset(ws.p, 0x5a, ws_bytes), cudaSuccess);  // garbage counters

    std::vector<uint8_t> out(on * eb);
    std::vector<float> lse((size_t)N * Q * Hq);
#if defined(NQ_GPU_SIM)
    const int reps = 1;  // the stand-in runs every CTA on host threads: keep CI short
#else
    const int reps = 2;
#endif
    for (int rep = 0; rep < reps; ++rep) {
        EXPECT_EQ(cudaMemset(dout.p, 0xff, on * eb), cudaSuccess);  // NaN in every dtype
        EXPECT_EQ(cudaMemset(dlse.p, 0xff, lse.size() * 4), cudaSuccess);
#if !defined(NQ_GPU_SIM)
        if (S.graph && rep == 1) {
            cudaStream_t st;
            EXPECT_EQ(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), cudaSuccess);
            cudaGraph_t graph;
            EXPECT_EQ(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal), cudaSuccess);
            const nq_status gs = nq::gpu_attention(ctx, call, ws_bytes ? ws.p : nullptr, st);
            EXPECT_EQ(cudaStreamEndCapture(st, &graph), cudaSuccess);
            EXPECT_EQ(gs, NQ_OK) << what << ": " << nq_last_error();
            cudaGraphExec_t exec;
            EXPECT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
            for (int replay = 0; replay < 3; ++replay) EXPECT_EQ(cudaGraphLaunch(exec, st), cudaSuccess);
            EXPECT_EQ(cudaStreamSynchronize(st), cudaSuccess);
            cudaGraphExecDestroy(exec);
            cudaGraphDestroy(graph);
            cudaStreamDestroy(st);
            continue;
        }
#endif
        if (S.public_api) {
            // The same batch through the public entry point: its workspace query, its
            // own split choice, and scratch from the allocator on the second run.
            nq_attention_desc ad;
            nq_attention_desc_init(&ad);
            ad.memory = NQ_MEMORY_CUDA;
            ad.num_seqs = N;
            ad.q_tokens = Q;
            ad.dtype = S.dtype;
            ad.block_images = call.block_images;
            ad.block_indptr = call.block_indptr;
            ad.q = call.q;
            ad.out = call.out;
            ad.out_stride_head = o_head;
            ad.out_stride_token = o_tok;
            ad.out_stride_seq = o_seq;
            ad.lse = call.lse;
            ad.q_positions = call.q_positions;
            ad.softcap = S.softcap;
            ad.window = S.window;
            size_t need = 0;
            EXPECT_EQ(nq_attention_workspace_size(ctx, &ad, &need), NQ_OK) << nq_last_error();
            DevBuf aws(need);
            const bool own = rep == 0 && need > 0;
            EXPECT_EQ(nq_attention_decode(ctx, &ad, own ? aws.p : nullptr, own ? need : 0, nullptr), NQ_OK)
                << what << ": " << nq_last_error();
        } else {
            EXPECT_EQ(nq::gpu_attention(ctx, call, ws_bytes ? ws.p : nullptr, nullptr), NQ_OK) << what << ": "
                                                                                               << nq_last_error();
        }
        EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    }
    EXPECT_EQ(cudaMemcpy(out.data(), dout.p, out.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(lse.data(), dlse.p, lse.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);

    // float64 reference.
    const double scale = call.scale;
    double num = 0.0, den = 0.0;
    std::vector<double> x, acc(D);
    for (uint32_t s = 0; s < N; ++s)
        for (uint32_t i = 0; i < Q; ++i)
            for (uint32_t hq = 0; hq < Hq; ++hq) {
                const uint32_t g = hq / S.group;
                const double *qv = &qd[(((size_t)s * Q + i) * Hq + hq) * D];
                const int64_t qp = qpos[(size_t)s * Q + i];
                x.clear();
                std::vector<const float *> vs;
                for (const HostBlock &b : blocks[s])
                    for (uint32_t t = 0; t < b.kept; ++t) {
                        const int64_t p = b.pos[(size_t)g * b.kept + t];
                        if (S.masks && (p > qp || (S.window && qp - p >= (int64_t)S.window))) continue;
                        const float *kv = &b.k[((size_t)g * b.kept + t) * D];
                        double dot = 0.0;
                        for (uint32_t d = 0; d < D; ++d) dot += qv[d] * kv[d];
                        dot *= scale;
                        if (S.softcap > 0.0f) dot = S.softcap * std::tanh(dot / S.softcap);
                        x.push_back(dot);
                        vs.push_back(&b.v[((size_t)g * b.kept + t) * D]);
                    }
                const size_t orow = (size_t)s * o_seq + (size_t)i * o_tok + (size_t)hq * o_head;
                const float got_lse = lse[((size_t)s * Q + i) * Hq + hq];
                if (x.empty()) {
                    ++res.masked_rows;
                    bool ok = std::isinf(got_lse) && got_lse < 0;
                    for (uint32_t d = 0; d < D; ++d) ok &= get(out, S.dtype, orow + d) == 0.0f;
                    res.bad_masked += !ok;
                    continue;
                }
                double m = -INFINITY;
                for (double v : x) m = std::max(m, v);
                double l = 0.0;
                std::fill(acc.begin(), acc.end(), 0.0);
                for (size_t t = 0; t < x.size(); ++t) {
                    const double p = std::exp(x[t] - m);
                    l += p;
                    for (uint32_t d = 0; d < D; ++d) acc[d] += p * vs[t][d];
                }
                res.lse_err = std::max(res.lse_err, std::fabs((double)got_lse - (m + std::log(l))));
                if (!std::isfinite(got_lse)) res.lse_err = INFINITY;
                for (uint32_t d = 0; d < D; ++d) {
                    const double r = acc[d] / l, o = get(out, S.dtype, orow + d);
                    if (std::isnan(o)) ++res.unwritten;
                    num += (o - r) * (o - r);
                    den += r * r;
                }
            }
    res.rel = den > 0 ? std::sqrt(num / den) : 0.0;
    if (res.unwritten) res.rel = INFINITY;
    for (auto &bs : blocks)
        for (HostBlock &b : bs) {
            nq_block_free(b.host);
            nq_block_free(b.dev);
        }
    nq_context_free(ctx);
    return res;
}

void check(const AttnCase &S, uint32_t seed, const std::string &what) {
    const Result r = run_attention(S, seed, what);
    if (::testing::Test::HasFatalFailure()) return;
    EXPECT_LE(r.rel, bound_for(S.dtype)) << what << ": relative error of the output";
    EXPECT_LE(r.lse_err, 1e-3) << what << ": absolute error of the log-sum-exp";
    EXPECT_EQ(r.unwritten, 0u) << what << ": output elements left unwritten";
    EXPECT_EQ(r.bad_masked, 0u) << what << ": fully masked queries must give zeros and lse -inf";
    if (S.masks) EXPECT_GT(r.masked_rows, 0u) << what << ": the test meant to mask one query fully";
}

#if defined(NQ_GPU_SIM)
const std::vector<std::vector<uint32_t>> kRagged = {{40}, {33, 50, 17}, {64, 5}};
#else
const std::vector<std::vector<uint32_t>> kRagged = {{700}, {333, 1050, 170}, {64, 5}, {2000}};
#endif

TEST(GpuAttention, RaggedBatchRopeModesAndSplits) {
    NQT_REQUIRE_DEVICE();
    for (nq_rope_mode rope : {NQ_ROPE_KEEP, NQ_ROPE_NONE, NQ_ROPE_REMOVE})
#if defined(NQ_GPU_SIM)
        for (uint32_t splits : {1u, 3u}) {
#else
        for (uint32_t splits : {1u, 3u, 64u}) {
#endif
            AttnCase S;
            S.D = 128;  // the lossless K3/V2 fast path
            S.rope = rope;
            S.seqs = kRagged;
            S.splits = splits;
            check(S, 100 + (uint32_t)rope * 10 + splits,
                  "rope " + std::to_string((int)rope) + ", splits " + std::to_string(splits));
        }
}

TEST(GpuAttention, PublicApiDeviceTables) {
    NQT_REQUIRE_DEVICE();
    for (nq_rope_mode rope : {NQ_ROPE_KEEP, NQ_ROPE_REMOVE}) {
        AttnCase S;
        S.D = 128;
        S.rope = rope;
        S.seqs = kRagged;
        S.masks = true;
        S.public_api = true;
        check(S, 900 + (uint32_t)rope, "public API, rope " + std::to_string((int)rope));
    }
}

TEST(GpuAttention, GqaHeadDimsDtypesQueryTokens) {
    NQT_REQUIRE_DEVICE();
    struct V {
        uint32_t group, D, q_tokens;
        nq_dtype dt;
        nq_preset preset;
    };
    std::vector<V> vs = {{1, 64, 1, NQ_DTYPE_F32, NQ_PRESET_LOSSLESS}, {2, 128, 2, NQ_DTYPE_BF16, NQ_PRESET_HIGH},
                         {8, 128, 1, NQ_DTYPE_F16, NQ_PRESET_LOSSLESS}, {4, 256, 3, NQ_DTYPE_F32, NQ_PRESET_S},
                         {8, 64, 4, NQ_DTYPE_F16, NQ_PRESET_XL},       {3, 96, 1, NQ_DTYPE_F32, NQ_PRESET_LOSSLESS},
                         {1, 512, 2, NQ_DTYPE_F32, NQ_PRESET_LOSSLESS}, {5, 24, 2, NQ_DTYPE_BF16, NQ_PRESET_M}};
#if defined(NQ_GPU_SIM)
    vs = {vs[0], vs[2], vs[4], vs[7]};
#endif
    for (const V &v : vs) {
        AttnCase S;
        S.group = v.group;
        S.D = v.D;
        S.q_tokens = v.q_tokens;
        S.dtype = v.dt;
        S.preset = v.preset;
#if defined(NQ_GPU_SIM)
        S.seqs = {{37}, {20, 30}};
#else
        S.seqs = {{377}, {200, 301}};
#endif
        S.splits = 2;
        S.out_pad = 8;
        check(S, 7 + v.D + v.group, "group " + std::to_string(v.group) + ", head_dim " + std::to_string(v.D) +
                                        ", q_tokens " + std::to_string(v.q_tokens) + ", preset " +
                                        nq_preset_name(v.preset));
    }
}

TEST(GpuAttention, EvictionMasksWindowSoftcap) {
    NQT_REQUIRE_DEVICE();
    // Variants 3 and 4: head_dim 128 with fp16 queries (the tensor-core path on CUDA
    // devices) under a sliding window and a soft-cap, lossless (K3/V2 tiles) and with
    // per-head eviction (other widths).
    for (int variant = 0; variant < 5; ++variant) {
        AttnCase S;
        S.D = variant == 1 || variant >= 3 ? 128 : 64;
        S.preset = variant == 2 ? NQ_PRESET_MAX : (variant == 3 ? NQ_PRESET_LOSSLESS : NQ_PRESET_BALANCED);
        S.rope = variant == 1 ? NQ_ROPE_REMOVE : NQ_ROPE_KEEP;
        S.q_tokens = 2;
        S.masks = true;
        S.window = variant == 0 ? 0 : 60;
        S.softcap = variant >= 2 ? 5.0f : 0.0f;
        S.dtype = variant >= 3 ? NQ_DTYPE_F16 : NQ_DTYPE_F32;
#if defined(NQ_GPU_SIM)
        S.seqs = {{60, 40}, {90}};
#else
        S.seqs = {{600, 400}, {900}, {128, 128, 128}};
#endif
        S.splits = 1 + 2 * (uint32_t)variant;
        check(S, 900 + (uint32_t)variant, "eviction/masks variant " + std::to_string(variant));
    }
}

// Key-centred blocks: coded keys are stored minus a per-block mean, which attention adds
// back as a logit offset per (block, head, query). Blocks of one sequence get different
// key offsets, so a missing offset moves both the output and the log-sum-exp.
TEST(GpuAttention, KeyCenteredBlocks) {
    NQT_REQUIRE_DEVICE();
    for (int variant = 0; variant < 4; ++variant) {
        AttnCase S;
        S.key_centering = true;
        S.D = variant == 3 ? 64 : 128;  // 128 with fp16 queries: the tensor-core path on CUDA devices
        S.rope = variant == 1 ? NQ_ROPE_REMOVE : NQ_ROPE_KEEP;
        S.preset = variant == 2 ? NQ_PRESET_BALANCED : NQ_PRESET_LOSSLESS;
        S.dtype = variant == 3 ? NQ_DTYPE_F32 : NQ_DTYPE_F16;
        S.masks = variant == 2;
#if defined(NQ_GPU_SIM)
        S.seqs = {{40, 30}, {50}};
#else
        S.seqs = {{600, 300, 200}, {900}, {128, 128}};
#endif
        S.splits = 1 + 2 * (uint32_t)variant;
        check(S, 4200 + (uint32_t)variant, "key centering variant " + std::to_string(variant));
    }
}

// Keys with RoPE removed at head_dim 128 (rebuilt per lane in registers when every dim
// is rotated): both pairings, positions far from zero (angles of many turns), GQA 8,
// eviction with other bit widths, key-centred blocks, and partial rotary (the warp path).
TEST(GpuAttention, RopeRemovedPairingsPositions) {
    NQT_REQUIRE_DEVICE();
    for (int variant = 0; variant < 4; ++variant) {
        AttnCase S;
        S.D = 128;
        S.rope = NQ_ROPE_REMOVE;
        S.pairing = variant == 1 || variant == 3 ? NQ_ROPE_INTERLEAVED : NQ_ROPE_SPLIT_HALF;
        S.rotary_dims = variant == 2 ? 64 : 0;
        S.pos_base = variant == 0 ? 200000 : (variant == 1 ? 5000 : 70000);
        S.group = variant == 1 ? 8 : 4;
        S.preset = variant == 1 ? NQ_PRESET_BALANCED : NQ_PRESET_LOSSLESS;
        S.dtype = variant == 3 ? NQ_DTYPE_BF16 : (variant == 1 ? NQ_DTYPE_F32 : NQ_DTYPE_F16);
        S.key_centering = variant == 3;
        S.masks = variant == 1;
#if defined(NQ_GPU_SIM)
        S.seqs = {{45, 30}, {50}};
#else
        S.seqs = {{600, 300, 200}, {900}, {128, 128}};
#endif
        S.splits = 1 + (uint32_t)variant;
        check(S, 7300 + (uint32_t)variant, "rope removed variant " + std::to_string(variant));
    }
}

#if !defined(NQ_GPU_SIM)
TEST(GpuAttention, GraphReplay) {
    NQT_REQUIRE_DEVICE();
    AttnCase S;
    S.D = 128;
    S.seqs = kRagged;
    S.splits = 5;
    S.graph = true;
    check(S, 4242, "graph replay");
}
#endif

TEST(GpuAttention, RejectsBadCalls) {
    NQT_REQUIRE_DEVICE();
    nq_config cfg;
    nq_config_init(&cfg);
    cfg.head_dim = 64;
    cfg.num_kv_heads = 2;
    nq_context *ctx = nullptr;
    ASSERT_EQ(nq_context_create(&cfg, &ctx), NQ_OK);
    nq::AttentionCall call{};
    call.num_seqs = 1;
    call.q_tokens = 1;
    call.head_dim = 64;
    call.num_kv_heads = 2;
    call.num_q_heads = 2;
    call.group = 1;
    call.num_splits = 0;
    EXPECT_EQ(nq::gpu_attention(ctx, call, nullptr, nullptr), NQ_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(nq_last_error()).find("num_splits"), std::string::npos) << nq_last_error();
    call.num_splits = 4;
    EXPECT_GT(nq::gpu_attention_workspace_bytes(ctx, call), 0u);
    EXPECT_EQ(nq::gpu_attention(ctx, call, nullptr, nullptr), NQ_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(nq_last_error()).find("workspace"), std::string::npos) << nq_last_error();
    const uint32_t s = nq::gpu_attention_splits(ctx, 1, 8);
    EXPECT_GE(s, 1u);
    EXPECT_LE(s, nq::kMaxAttentionSplits);
    nq_context_free(ctx);
}

}  // namespace
