// Throughput of the CUDA backend on KV shapes of Llama-3-8B / Mistral-7B (32 layers,
// 8 KV heads, head_dim 128) and a head_dim 64 model, next to a device-to-device copy
// of the same bytes timed in the same run.
//
//   bench_cuda [--quick] [--reps N] [--shape I] [--key-centering 0|1]
//
// --key-centering: nq_config.key_centering (default: the library's, on).
//
// compress: one nq_compress_batch call over the layers of a shape (caller buffers and
// workspace), timed around the API call with events ("call": host planning, uploads and
// kernels) and as a replayed CUDA graph of the same call ("graph": device time only).
// decode: one nq_decode per layer into a contiguous fp16 [heads][tokens][dim] buffer.
// GB/s counts the fp16 K and V bytes read (compress) or written (decode); the copy
// column is bytes copied per second by cudaMemcpyAsync (each byte read once and
// written once). Medians of N runs after warm-up; inputs are random, never zeros.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

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
int g_key_centering = -1;  // --key-centering: -1 the library's default

__global__ void fill_random(uint16_t *p, size_t n, uint32_t seed) {
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
        p[i] = __half_as_ushort(__float2half(s * 1.7f));
    }
}

struct Timer {
    cudaEvent_t a, b;
    Timer() {
        CK(cudaEventCreate(&a));
        CK(cudaEventCreate(&b));
    }
    ~Timer() {
        cudaEventDestroy(a);
        cudaEventDestroy(b);
    }
};

template <class F> double median_ms(cudaStream_t s, int warm, int reps, F &&f) {
    Timer t;
    for (int i = 0; i < warm; ++i) f();
    CK(cudaStreamSynchronize(s));
    std::vector<double> v;
    for (int i = 0; i < reps; ++i) {
        CK(cudaEventRecord(t.a, s));
        f();
        CK(cudaEventRecord(t.b, s));
        CK(cudaEventSynchronize(t.b));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, t.a, t.b));
        v.push_back(ms);
    }
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

struct Shape {
    const char *name;
    uint32_t layers, heads, dim, tokens;
    nq_preset preset;
    nq_rope_mode rope;
};

struct Row {
    std::string name;
    double kv_mb, out_mb, ratio, c_call_ms, c_graph_ms, d_ms, copy_ms;
};

Row run(const Shape &sh, cudaStream_t s, int reps) {
    nq_config cfg;
    nq_config_init(&cfg);
    cfg.head_dim = sh.dim;
    cfg.num_kv_heads = sh.heads;
    cfg.num_q_heads = sh.heads * 4;
    cfg.preset = sh.preset;
    if (g_key_centering >= 0) cfg.key_centering = (uint32_t)g_key_centering;
    cfg.rope.mode = sh.rope;
    cfg.rope.theta = 500000.0;
    nq_context *ctx = nullptr;
    NQ(nq_context_create(&cfg, &ctx));
    const size_t per = (size_t)sh.heads * sh.tokens * sh.dim;  // elements of K (or V) per layer
    const size_t L = sh.layers;
    uint16_t *kv = nullptr;
    CK(cudaMalloc(&kv, per * 2 * 2 * L));
    fill_random<<<1024, 256, 0, s>>>(kv, per * 2 * L, 12345u);
    CK(cudaGetLastError());
    std::vector<nq_kv_desc> items(L);
    for (size_t l = 0; l < L; ++l) {
        nq_kv_desc &kv_d = items[l];
        nq_kv_desc_init(&kv_d);
        kv_d.dtype = NQ_DTYPE_F16;
        kv_d.memory = NQ_MEMORY_CUDA;
        kv_d.layer = (uint32_t)l;
        kv_d.num_tokens = sh.tokens;
        kv_d.k = kv + per * 2 * l;
        kv_d.v = kv + per * (2 * l + 1);
        nq_layout_contiguous(&kv_d.k_layout, sh.tokens, sh.dim);
        kv_d.v_layout = kv_d.k_layout;
    }
    size_t ws_bytes = 0, total = 0;
    NQ(nq_workspace_size(ctx, items.data(), L, &ws_bytes));
    std::vector<size_t> bound(L);
    for (size_t l = 0; l < L; ++l) {
        NQ(nq_compress_bound(ctx, &items[l], &bound[l]));
        total += (bound[l] + 255) / 256 * 256;
    }
    uint8_t *blocks = nullptr, *ws = nullptr;
    CK(cudaMalloc(&blocks, total));
    CK(cudaMalloc(&ws, ws_bytes));
    std::vector<nq_buffer> dst(L);
    for (size_t l = 0, off = 0; l < L; ++l) {
        dst[l] = nq_buffer{blocks + off, bound[l]};
        off += (bound[l] + 255) / 256 * 256;
    }
    std::vector<nq_block *> out(L, nullptr);
    auto compress = [&]() {
        for (auto *b : out) nq_block_free(b);
        NQ(nq_compress_batch(ctx, items.data(), nullptr, L, dst.data(), ws, ws_bytes, s, out.data(), nullptr));
    };
    Row r;
    r.name = sh.name;
    r.kv_mb = (double)per * 2 * 2 * L / 1e6;
    r.c_call_ms = median_ms(s, 3, reps, compress);
    nq_block_info info;
    info.size = sizeof info;
    NQ(nq_block_get_info(out[0], &info));
    r.ratio = info.ratio;

    // The same call as a graph: device time only.
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    std::vector<nq_block *> gout(L, nullptr);
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    nq_status st = nq_compress_batch(ctx, items.data(), nullptr, L, dst.data(), ws, ws_bytes, s, gout.data(), nullptr);
    CK(cudaStreamEndCapture(s, &graph));
    NQ(st);
    CK(cudaGraphInstantiate(&exec, graph, 0));
    r.c_graph_ms = median_ms(s, 3, reps, [&]() { CK(cudaGraphLaunch(exec, s)); });
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    for (auto *b : gout) nq_block_free(b);

    // Decode every layer into one fp16 buffer per K and V.
    uint16_t *dk = nullptr, *dv = nullptr;
    CK(cudaMalloc(&dk, per * 2));
    CK(cudaMalloc(&dv, per * 2));
    std::vector<nq_kv_desc> outs(L);
    r.out_mb = 0;
    for (size_t l = 0; l < L; ++l) {
        NQ(nq_block_get_info(out[l], &info));
        r.out_mb += (double)info.tokens_kept * sh.heads * sh.dim * 2 * 2 / 1e6;
        nq_kv_desc &o = outs[l];
        o = items[l];
        o.k = dk;
        o.v = dv;
        o.num_tokens = info.tokens_kept;
        nq_layout_contiguous(&o.k_layout, o.num_tokens, sh.dim);
        o.v_layout = o.k_layout;
    }
    r.d_ms = median_ms(s, 2, reps, [&]() {
        for (size_t l = 0; l < L; ++l) NQ(nq_decode(ctx, out[l], 0, outs[l].num_tokens, &outs[l], s));
    });
    // The copy of the same fp16 bytes.
    uint16_t *cp = nullptr;
    CK(cudaMalloc(&cp, per * 2 * 2 * L));
    r.copy_ms = median_ms(s, 3, reps, [&]() { CK(cudaMemcpyAsync(cp, kv, per * 2 * 2 * L, cudaMemcpyDeviceToDevice, s)); });
    CK(cudaStreamSynchronize(s));
    for (auto *b : out) nq_block_free(b);
    cudaFree(cp);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(blocks);
    cudaFree(ws);
    cudaFree(kv);
    nq_context_free(ctx);
    return r;
}

}  // namespace

int main(int argc, char **argv) {
    bool quick = false;
    int reps = 15, only = -1;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--quick")) quick = true;
        if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
        if (!std::strcmp(argv[i], "--shape") && i + 1 < argc) only = std::atoi(argv[++i]);
        if (!std::strcmp(argv[i], "--key-centering") && i + 1 < argc) g_key_centering = std::atoi(argv[++i]) ? 1 : 0;
    }
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        std::printf("bench_cuda: no CUDA device\n");
        return 0;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs, nexusquant %s\n", prop.name, prop.multiProcessorCount, nq_version_string());
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    std::vector<Shape> shapes = {
        {"llama3-8b 1664 tok x32 layers", 32, 8, 128, 1664, NQ_PRESET_LOSSLESS, NQ_ROPE_REMOVE},
        {"llama3-8b 32K tok x8 layers", 8, 8, 128, 32768, NQ_PRESET_LOSSLESS, NQ_ROPE_REMOVE},
        {"llama3-8b 128K tok x2 layers", 2, 8, 128, 131072, NQ_PRESET_LOSSLESS, NQ_ROPE_REMOVE},
        {"llama3-8b 32K rope-keep x8", 8, 8, 128, 32768, NQ_PRESET_LOSSLESS, NQ_ROPE_KEEP},
        {"llama3-8b 32K max(evict) x8", 8, 8, 128, 32768, NQ_PRESET_MAX, NQ_ROPE_REMOVE},
        {"hd64 32K tok x8 layers", 8, 8, 64, 32768, NQ_PRESET_LOSSLESS, NQ_ROPE_REMOVE},
    };
    if (quick) shapes.resize(2);
    if (only >= 0 && only < (int)shapes.size()) shapes = {shapes[(size_t)only]};
    std::vector<Row> rows;
    for (const Shape &sh : shapes) {
        rows.push_back(run(sh, s, reps));
        const Row &r = rows.back();
        std::printf("done: %s\n", r.name.c_str());
        std::fflush(stdout);
    }
    std::printf("\ncompress GB/s: fp16 K+V bytes read; decode GB/s: fp16 K+V bytes written (kept tokens);\n"
                "memcpy GB/s: bytes copied (each read once and written once)\n");
    std::printf("\n%-32s %9s %6s | %10s %8s %10s %8s | %9s %8s | %9s %8s\n", "shape (fp16 K+V)", "KV MB", "ratio",
                "comp call", "GB/s", "comp graph", "GB/s", "decode", "GB/s", "memcpy", "GB/s");
    for (const Row &r : rows) {
        auto gbs = [&](double ms) { return r.kv_mb / 1e3 / (ms / 1e3); };
        std::printf("%-32s %9.1f %6.2f | %8.3fms %8.1f %8.3fms %8.1f | %7.3fms %8.1f | %7.3fms %8.1f\n",
                    r.name.c_str(), r.kv_mb, r.ratio, r.c_call_ms, gbs(r.c_call_ms), r.c_graph_ms, gbs(r.c_graph_ms),
                    r.d_ms, r.out_mb / 1e3 / (r.d_ms / 1e3), r.copy_ms, gbs(r.copy_ms));
    }
    cudaStreamDestroy(s);
    return 0;
}
