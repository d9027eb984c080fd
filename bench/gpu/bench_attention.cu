// Decode-step attention over resident blocks on the GPU (gpu_attention), Llama-3-8B
// layer shape (32 query heads, 8 KV heads, head_dim 128), preset lossless (K3/V2,
// fp16 sinks 4 and window 32 per block), one query token per sequence, fp16 q/out.
// Each sequence's history is blocks of 4096 tokens compressed on the device.
//
//   bench_attention [--reps N] [--splits S] [--check 0|1] [--shape I] [--key-centering 0|1]
//
// --key-centering: the blocks' keys coded centred (1) or not (0); default the library's.
//
// Prints one JSON object per shape: tokens, batch, rope, bytes_read (every resident
// byte of the blocks), splits, fused_us (median over N replays of a CUDA graph of the
// call: device time), call_us (the call itself, host side included), copy_gbps (a
// device-to-device copy of 1 GiB in the same run, bytes read + written per second),
// floor_us (bytes_read at copy_gbps), max_rel_err (the worst query head of sequence 0
// against float64 attention over the blocks decoded to f32). Inputs are random.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "attention/attention.h"
#include "../../backends/cuda/gpu_backend.h"
#include "nexusquant.h"

#define CK(x)                                                                                           \
    do {                                                                                                \
        cudaError_t e_ = (x);                                                                           \
        if (e_ != cudaSuccess) {                                                                        \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));     \
            std::exit(1);                                                                               \
        }                                                                                               \
    } while (0)
#define NQ(x)                                                                                           \
    do {                                                                                                \
        nq_status s_ = (x);                                                                             \
        if (s_ != NQ_OK) {                                                                              \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, nq_last_error());            \
            std::exit(1);                                                                               \
        }                                                                                               \
    } while (0)

namespace {

constexpr uint32_t kD = 128, kH = 8, kHq = 32, kBlockTokens = 4096;

__global__ void fill_random(uint16_t *p, size_t n, uint32_t seed, float amp) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t x = (uint32_t)i * 0x9e3779b9u ^ seed;
        float s = 0.0f;
        for (int k = 0; k < 4; ++k) {
            x ^= x >> 16;
            x *= 0x7feb352du;
            x ^= x >> 15;
            x *= 0x846ca68bu;
            x ^= x >> 16;
            s += (float)(x & 0xffffu) * (1.0f / 65536.0f) - 0.5f;
        }
        p[i] = __half_as_ushort(__float2half(s * amp));
    }
}

#if defined(NQ_ATTN_TRACE)
}  // namespace
namespace nq {
size_t gpu_attention_trace(unsigned long long *dst, size_t max_ctas);
void gpu_attention_trace_clear();
}  // namespace nq
namespace {
// One replay with the kernel's per-CTA timer stamps: where the time of a launch goes.
void print_trace(cudaStream_t s, cudaGraphExec_t exec, size_t ctas) {
    constexpr int N = 16;  // stamps per CTA (attention.cu kTraceStamps)
    nq::gpu_attention_trace_clear();
    CK(cudaGraphLaunch(exec, s));
    CK(cudaStreamSynchronize(s));
    std::vector<unsigned long long> t(ctas * N);
    ctas = nq::gpu_attention_trace(t.data(), ctas);
    unsigned long long t0 = ~0ull, tend = 0;
    for (size_t c = 0; c < ctas; ++c) {
        t0 = std::min(t0, t[c * N]);
        for (int i = 0; i < N; ++i)
            if (t[c * N + i]) tend = std::max(tend, t[c * N + i]);
    }
    auto pct = [](std::vector<double> v, double q) {
        if (v.empty()) return 0.0;
        std::sort(v.begin(), v.end());
        return v[std::min(v.size() - 1, (size_t)(q * (double)(v.size() - 1)))];
    };
    // Stamps in the order a CTA passes them, each with the stamp it is timed from.
    struct Row {
        int id, from;
        const char *name;
    };
    const Row rows[] = {{0, -1, "start"},     {1, 0, "share"},       {7, 1, "q loaded"},   {8, 7, "q rotated"},
                        {2, 8, "queries"},    {9, 2, "blk+bias"},    {10, 9, "tile 1"},    {11, 10, "coded"},
                        {12, 11, "raw"},      {3, 12, "pass"},       {4, 3, "partials"},   {5, 4, "exit"},
                        {6, 4, "merged"}};
    std::fprintf(stderr, "trace: %zu CTAs, span %.1f us (first start to last stamp)\n", ctas, (tend - t0) * 1e-3);
    for (const Row &r : rows) {
        std::vector<double> at, dur;
        for (size_t c = 0; c < ctas; ++c) {
            const unsigned long long x = t[c * N + r.id];
            if (!x) continue;
            at.push_back((x - t0) * 1e-3);
            if (r.from >= 0 && t[c * N + r.from]) dur.push_back(((double)x - (double)t[c * N + r.from]) * 1e-3);
        }
        std::fprintf(stderr, "  %-9s n=%5zu at p50 %7.1f p90 %7.1f max %7.1f us | since previous p50 %6.1f p90 %6.1f max %6.1f\n",
                     r.name, at.size(), pct(at, 0.5), pct(at, 0.9), pct(at, 1.0), pct(dur, 0.5), pct(dur, 0.9),
                     pct(dur, 1.0));
    }
    // Per CTA (split, head, sequence order): pass time and whether its tokens cross a block edge.
    for (size_t c = 0; c < ctas; ++c) {
        const unsigned long long *x = &t[c * N];
        if (!x[3] || !x[2]) continue;
        std::fprintf(stderr, "#cta %zu queries %.1f pass %.1f coded %.1f raw %.1f\n", c, (x[2] - x[0]) * 1e-3, (x[3] - x[2]) * 1e-3,
                    x[11] && x[2] ? ((double)x[11] - (double)x[2]) * 1e-3 : -1.0,
                    x[12] && x[11] ? ((double)x[12] - (double)x[11]) * 1e-3 : -1.0);
    }
}
#endif

template <class F> double median_ms(cudaStream_t s, int warm, int reps, F &&f) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < warm; ++i) f();
    CK(cudaStreamSynchronize(s));
    std::vector<double> v;
    for (int i = 0; i < reps; ++i) {
        CK(cudaEventRecord(a, s));
        f();
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, a, b));
        v.push_back(ms);
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

double half_to_double(uint16_t h) { return (double)__half2float(__ushort_as_half(h)); }

struct Shape {
    uint32_t tokens, batch;
    nq_rope_mode rope;
};

void run(const Shape &sh, cudaStream_t s, int reps, uint32_t force_splits, bool check, double copy_gbps,
         int key_centering) {
    nq_config cfg;
    nq_config_init(&cfg);
    if (key_centering >= 0) cfg.key_centering = (uint32_t)key_centering;
    cfg.head_dim = kD;
    cfg.num_kv_heads = kH;
    cfg.num_q_heads = kHq;
    cfg.preset = NQ_PRESET_LOSSLESS;
    cfg.rope.mode = sh.rope;
    cfg.rope.theta = 500000.0;
    nq_context *ctx = nullptr;
    NQ(nq_context_create(&cfg, &ctx));

    // Compress each sequence's history block by block on the device.
    const uint32_t bt = std::min(sh.tokens, kBlockTokens);
    const size_t per = (size_t)kH * bt * kD;
    uint16_t *kv = nullptr;
    CK(cudaMalloc(&kv, per * 2 * 2));
    std::vector<nq_block *> blocks;
    std::vector<const void *> images;
    std::vector<uint32_t> indptr{0};
    size_t bytes_read = 0;
    for (uint32_t b = 0; b < sh.batch; ++b) {
        for (uint32_t t0 = 0; t0 < sh.tokens; t0 += bt) {
            const uint32_t n = std::min(bt, sh.tokens - t0);
            fill_random<<<512, 256, 0, s>>>(kv, per, 1000u * b + t0 / bt + 1, 3.0f);
            fill_random<<<512, 256, 0, s>>>(kv + per, per, 7777u + 1000u * b + t0 / bt, 1.7f);
            CK(cudaGetLastError());
            nq_kv_desc d;
            nq_kv_desc_init(&d);
            d.dtype = NQ_DTYPE_F16;
            d.memory = NQ_MEMORY_CUDA;
            d.num_tokens = n;
            d.k = kv;
            d.v = kv + per;
            nq_layout_contiguous(&d.k_layout, bt, kD);
            d.v_layout = d.k_layout;
            d.start_position = t0;
            nq_block *blk = nullptr;
            NQ(nq_compress_kv(ctx, &d, nullptr, s, &blk));
            const void *img = nullptr;
            size_t nb = 0;
            NQ(nq_block_data(blk, &img, &nb));
            blocks.push_back(blk);
            images.push_back(img);
            bytes_read += nb;
        }
        indptr.push_back((uint32_t)images.size());
    }
    CK(cudaStreamSynchronize(s));

    const size_t qn = (size_t)sh.batch * kHq * kD;
    uint16_t *q = nullptr, *out = nullptr;
    float *lse = nullptr;
    void *dimages = nullptr, *dindptr = nullptr;
    CK(cudaMalloc(&q, qn * 2));
    CK(cudaMalloc(&out, qn * 2));
    CK(cudaMalloc(&lse, (size_t)sh.batch * kHq * 4));
    CK(cudaMalloc(&dimages, images.size() * sizeof(void *)));
    CK(cudaMalloc(&dindptr, indptr.size() * 4));
    CK(cudaMemcpy(dimages, images.data(), images.size() * sizeof(void *), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dindptr, indptr.data(), indptr.size() * 4, cudaMemcpyHostToDevice));
    fill_random<<<64, 256, 0, s>>>(q, qn, 4242u, 3.0f);
    CK(cudaGetLastError());

    nq::AttentionCall call{};
    call.memory = NQ_MEMORY_CUDA;
    call.num_seqs = sh.batch;
    call.q_tokens = 1;
    call.dtype = NQ_DTYPE_F16;
    call.head_dim = kD;
    call.num_kv_heads = kH;
    call.num_q_heads = kHq;
    call.group = kHq / kH;
    call.block_images = static_cast<const void *const *>(dimages);
    call.block_indptr = static_cast<const uint32_t *>(dindptr);
    call.q = q;
    call.q_stride_head = kD;
    call.q_stride_token = kHq * kD;
    call.q_stride_seq = kHq * kD;
    call.out = out;
    call.out_stride_head = kD;
    call.out_stride_token = kHq * kD;
    call.out_stride_seq = kHq * kD;
    call.lse = lse;
    call.scale = (float)(1.0 / std::sqrt((double)kD));
    call.num_splits = force_splits ? force_splits : nq::gpu_attention_splits(ctx, sh.batch, kH);
    const size_t ws_bytes = nq::gpu_attention_workspace_bytes(ctx, call);
    void *ws = nullptr;
    CK(cudaMalloc(&ws, ws_bytes ? ws_bytes : 1));

    const double call_ms = median_ms(s, 3, reps, [&]() { NQ(nq::gpu_attention(ctx, call, ws, s)); });
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    const nq_status st = nq::gpu_attention(ctx, call, ws, s);
    CK(cudaStreamEndCapture(s, &graph));
    NQ(st);
    CK(cudaGraphInstantiate(&exec, graph, 0));
    const double graph_ms = median_ms(s, 5, reps, [&]() { CK(cudaGraphLaunch(exec, s)); });
    CK(cudaStreamSynchronize(s));
#if defined(NQ_ATTN_TRACE)
    print_trace(s, exec, (size_t)call.num_splits * kH * sh.batch);
#endif

    // Accuracy on sequence 0: float64 attention over its blocks decoded to f32.
    double max_rel = -1.0;
    if (check) {
        std::vector<uint16_t> hq(qn), ho(qn);
        CK(cudaMemcpy(hq.data(), q, qn * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(ho.data(), out, qn * 2, cudaMemcpyDeviceToHost));
        float *dk = nullptr, *dv = nullptr;
        CK(cudaMalloc(&dk, per * 4));
        CK(cudaMalloc(&dv, per * 4));
        std::vector<std::vector<double>> x(kHq);
        std::vector<std::vector<double>> acc(kHq, std::vector<double>(kD, 0.0));
        std::vector<double> m(kHq, -INFINITY), l(kHq, 0.0);
        std::vector<float> hk(per), hv(per);
        for (uint32_t i = indptr[0]; i < indptr[1]; ++i) {
            nq_block_info info;
            info.size = sizeof info;
            NQ(nq_block_get_info(blocks[i], &info));
            const uint32_t kept = info.tokens_kept;
            nq_kv_desc o;
            nq_kv_desc_init(&o);
            o.dtype = NQ_DTYPE_F32;
            o.memory = NQ_MEMORY_CUDA;
            o.num_tokens = kept;
            o.k = dk;
            o.v = dv;
            nq_layout_contiguous(&o.k_layout, kept, kD);
            o.v_layout = o.k_layout;
            NQ(nq_decode(ctx, blocks[i], 0, kept, &o, s));
            CK(cudaStreamSynchronize(s));
            CK(cudaMemcpy(hk.data(), dk, (size_t)kH * kept * kD * 4, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(hv.data(), dv, (size_t)kH * kept * kD * 4, cudaMemcpyDeviceToHost));
            for (uint32_t h = 0; h < kHq; ++h) {
                const uint32_t g = h / (kHq / kH);
                for (uint32_t t = 0; t < kept; ++t) {
                    const float *kr = &hk[((size_t)g * kept + t) * kD];
                    const float *vr = &hv[((size_t)g * kept + t) * kD];
                    double dot = 0.0;
                    for (uint32_t d = 0; d < kD; ++d) dot += half_to_double(hq[(size_t)h * kD + d]) * kr[d];
                    dot *= call.scale;
                    if (dot > m[h]) {  // online softmax in float64
                        const double c = std::exp(m[h] - dot);
                        l[h] *= c;
                        for (uint32_t d = 0; d < kD; ++d) acc[h][d] *= c;
                        m[h] = dot;
                    }
                    const double p = std::exp(dot - m[h]);
                    l[h] += p;
                    for (uint32_t d = 0; d < kD; ++d) acc[h][d] += p * vr[d];
                }
            }
        }
        for (uint32_t h = 0; h < kHq; ++h) {
            double num = 0.0, den = 0.0;
            for (uint32_t d = 0; d < kD; ++d) {
                const double r = acc[h][d] / l[h], o = half_to_double(ho[(size_t)h * kD + d]);
                num += (o - r) * (o - r);
                den += r * r;
            }
            max_rel = std::max(max_rel, std::sqrt(num / den));
        }
        cudaFree(dk);
        cudaFree(dv);
    }

    const double fused_us = graph_ms * 1e3, floor_us = bytes_read / (copy_gbps * 1e9) * 1e6;
    std::printf("{\"tokens\": %u, \"batch\": %u, \"q_heads\": %u, \"kv_heads\": %u, \"head_dim\": %u, "
                "\"preset\": \"lossless\", \"rope\": \"%s\", \"block_tokens\": %u, \"bytes_read\": %zu, "
                "\"splits\": %u, \"fused_us\": %.2f, \"call_us\": %.2f, \"copy_gbps\": %.1f, \"floor_us\": %.2f, "
                "\"floor_fraction\": %.3f, \"max_rel_err\": %.3g, \"key_centering\": %u}\n",
                sh.tokens, sh.batch, kHq, kH, kD, sh.rope == NQ_ROPE_KEEP ? "keep" : "remove", bt, bytes_read,
                call.num_splits, fused_us, call_ms * 1e3, copy_gbps, floor_us, floor_us / fused_us, max_rel,
                cfg.key_centering);
    std::fflush(stdout);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    for (nq_block *b : blocks) nq_block_free(b);
    cudaFree(ws);
    cudaFree(dimages);
    cudaFree(dindptr);
    cudaFree(q);
    cudaFree(out);
    cudaFree(lse);
    cudaFree(kv);
    nq_context_free(ctx);
}

}  // namespace

int main(int argc, char **argv) {
    int reps = 50;
    uint32_t splits = 0;
    bool check = true;
    int only = -1, key_centering = -1;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
        if (!std::strcmp(argv[i], "--splits") && i + 1 < argc) splits = (uint32_t)std::atoi(argv[++i]);
        if (!std::strcmp(argv[i], "--check") && i + 1 < argc) check = std::atoi(argv[++i]) != 0;
        if (!std::strcmp(argv[i], "--shape") && i + 1 < argc) only = std::atoi(argv[++i]);
        if (!std::strcmp(argv[i], "--key-centering") && i + 1 < argc) key_centering = std::atoi(argv[++i]);
    }
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        std::printf("bench_attention: no CUDA device\n");
        return 0;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    std::fprintf(stderr, "device: %s, %d SMs, nexusquant %s\n", prop.name, prop.multiProcessorCount,
                 nq_version_string());
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    // Copy bandwidth in this run: 1 GiB device to device, bytes read + written.
    const size_t cb = (size_t)1 << 30;
    void *a = nullptr, *b = nullptr;
    CK(cudaMalloc(&a, cb));
    CK(cudaMalloc(&b, cb));
    CK(cudaMemset(a, 1, cb));
    const double copy_ms = median_ms(s, 3, 10, [&]() { CK(cudaMemcpyAsync(b, a, cb, cudaMemcpyDeviceToDevice, s)); });
    const double copy_gbps = 2.0 * cb / (copy_ms / 1e3) / 1e9;
    cudaFree(a);
    cudaFree(b);
    const Shape shapes[] = {{131072, 1, NQ_ROPE_KEEP}, {32768, 8, NQ_ROPE_KEEP}, {4096, 1, NQ_ROPE_KEEP},
                            {131072, 1, NQ_ROPE_REMOVE}, {32768, 8, NQ_ROPE_REMOVE}, {4096, 1, NQ_ROPE_REMOVE}};
    for (int i = 0; i < 6; ++i)
        if (only < 0 || only == i) run(shapes[i], s, reps, splits, check, copy_gbps, key_centering);
    cudaStreamDestroy(s);
    return 0;
}
