// nq bench --attention: one decode step of attention over compressed blocks
// (nq_attention_decode), against decoding the blocks to fp16 and attending over that
// (unfused), and against attention over the uncompressed fp16 cache (fp16). CPU times
// are CPU seconds of the process per call (clock_gettime(CLOCK_PROCESS_CPUTIME_ID)):
// on a shared machine they do not depend on what else runs; wall times are printed too.
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../../src/core/half.h"
#include "attention_bench.h"
#include "fp16_attention.h"
#include "json_writer.h"
#include "pipeline.h"

#if defined(NQ_HAVE_CUDA) && !defined(NQ_HAVE_HIP) && !defined(NQ_GPU_SIM)
#include <cuda_runtime_api.h>
#define NQ_BENCH_CUDA 1
#endif

namespace nqcli {
namespace {

double now(clockid_t id) {
    timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct Time {
    double cpu_ms = 0, wall_ms = 0;
};

// Median CPU and wall time per call over at least `repeat` calls and `min_s` seconds.
template <class F> Time time_it(uint32_t repeat, double min_s, F fn) {
    fn();  // warm: caches, page faults, thread start
    std::vector<double> cpu, wall;
    const double start = now(CLOCK_MONOTONIC);
    while (cpu.size() < repeat || now(CLOCK_MONOTONIC) - start < min_s) {
        const double c0 = now(CLOCK_PROCESS_CPUTIME_ID), w0 = now(CLOCK_MONOTONIC);
        fn();
        cpu.push_back((now(CLOCK_PROCESS_CPUTIME_ID) - c0) * 1e3);
        wall.push_back((now(CLOCK_MONOTONIC) - w0) * 1e3);
        if (cpu.size() >= 1000) break;
    }
    std::sort(cpu.begin(), cpu.end());
    std::sort(wall.begin(), wall.end());
    return {cpu[cpu.size() / 2], wall[wall.size() / 2]};
}

double rel_err(const std::vector<float> &a, const std::vector<float> &ref, uint32_t D) {
    double worst = 0;
    for (size_t r = 0; r * D < ref.size(); ++r) {
        double num = 0, den = 0;
        for (uint32_t d = 0; d < D; ++d) {
            const double x = a[r * D + d], y = ref[r * D + d];
            num += (x - y) * (x - y);
            den += y * y;
        }
        worst = std::max(worst, std::sqrt(num / std::max(den, 1e-300)));
    }
    return worst;
}

}  // namespace

std::vector<OptSpec> attention_bench_specs() {
    return {{"attention", false}, {"batch", true}, {"q-heads", true}};
}

int run_attention_bench(const Args &a, const PipelineOptions &opt_in, uint32_t repeat, double min_s) {
    PipelineOptions opt = opt_in;
    const uint32_t T = (uint32_t)a.u64("tokens", 32768, 1, 1u << 24);
    const uint32_t B = (uint32_t)a.u64("batch", 1, 1, 4096);
    const uint32_t KV = (uint32_t)a.u64("kv-heads", 8, 1, 4096);
    const uint32_t QH = (uint32_t)a.u64("q-heads", 32, 1, 65536);
    const uint32_t D = (uint32_t)a.u64("head-dim", 128, 8, 512);
    const uint64_t seed = a.u64("seed", 1, 0, UINT64_MAX);
    if (QH % KV) throw CliError("--q-heads must be a multiple of --kv-heads");
    const bool cuda = opt.backend == NQ_BACKEND_CUDA;
    if (opt.backend != NQ_BACKEND_AUTO && opt.backend != NQ_BACKEND_CPU && !cuda)
        throw CliError("--attention runs on --backend cpu (default) or cuda");
#if !defined(NQ_BENCH_CUDA)
    if (cuda) throw CliError("--backend cuda: this build has no CUDA backend");
#endif
    if (!cuda) opt.backend = NQ_BACKEND_CPU;

    // A context per shape with query heads: make_context knows only KV heads.
    nq_config cfg;
    nq_config_init(&cfg);
    {
        ContextPtr probe = make_context(opt, D, KV, 1);
        check(nq_context_get_config(probe.get(), &cfg), "nq_context_get_config");
    }
    cfg.num_q_heads = QH;
    nq_context *raw = nullptr;
    check(nq_context_create(&cfg, &raw), "nq_context_create");
    ContextPtr ctx(raw);
    nq_context *c = ctx.get();
    nq_layer_params lp{};
    lp.size = sizeof lp;
    check(nq_context_layer_params(c, 0, &lp), "nq_context_layer_params");

    // Gaussian fp16 K and V per sequence, [kv_heads][tokens][dim]; queries fp16.
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> g(0.0f, 1.0f);
    const size_t per_seq = (size_t)KV * T * D;
    std::vector<uint16_t> k(per_seq * B), v(per_seq * B);
    for (size_t i = 0; i < k.size(); ++i) {
        k[i] = nq::f32_to_f16(g(rng) + ((i / D) % 7 == 0 ? 1.0f : 0.0f));
        v[i] = nq::f32_to_f16(g(rng));
    }
    std::vector<float> qf((size_t)B * QH * D);
    std::vector<uint16_t> q16(qf.size());
    for (size_t i = 0; i < qf.size(); ++i) {
        q16[i] = nq::f32_to_f16(g(rng));
        qf[i] = nq::f16_to_f32(q16[i]);
    }

    std::vector<BlockPtr> blocks(B);
    std::vector<const void *> images(B);
    std::vector<uint32_t> indptr(B + 1);
    uint64_t resident = 0;
    for (uint32_t s = 0; s < B; ++s) {
        nq_kv_desc d;
        nq_kv_desc_init(&d);
        d.dtype = NQ_DTYPE_F16;
        d.num_tokens = T;
        d.k = k.data() + s * per_seq;
        d.v = v.data() + s * per_seq;
        nq_layout_contiguous(&d.k_layout, T, D);
        d.v_layout = d.k_layout;
        nq_block *b = nullptr;
        check(nq_compress_kv(c, &d, nullptr, nullptr, &b), "nq_compress_kv");
        blocks[s].reset(b);
        size_t bytes = 0;
        check(nq_block_data(b, &images[s], &bytes), "nq_block_data");
        resident += bytes;
        indptr[s + 1] = s + 1;
    }
    const uint32_t kept = block_info(blocks[0].get()).tokens_kept;
    const uint64_t fp16_bytes = 4ull * B * KV * T * D;

    nq_attention_desc desc;
    nq_attention_desc_init(&desc);
    desc.num_seqs = B;
    desc.dtype = NQ_DTYPE_F16;
    desc.block_images = images.data();
    desc.block_indptr = indptr.data();
    std::vector<uint16_t> out16(qf.size());
    std::vector<float> lse((size_t)B * QH);
    desc.q = q16.data();
    desc.out = out16.data();
    desc.lse = lse.data();
    const float scale = (float)(1.0 / std::sqrt((double)D));

    JsonWriter j;
    j.begin_object().u64("tokens", T).u64("batch", B).u64("q_heads", QH).u64("kv_heads", KV).u64("head_dim", D);
    j.str("preset", nq_preset_name(opt.preset)).u64("k_bits", lp.k_bits).u64("v_bits", lp.v_bits);
    j.flt("evict", lp.evict_fraction).str("rope", rope_mode_name(opt.rope)).u64("tokens_kept", kept);

    if (!cuda) {
        const nq::AttnKernels *ak = attention_kernels_for(nq_context_cpu_isa(c));
        const uint32_t threads = cfg.num_threads ? cfg.num_threads : 1;
        size_t ws_bytes = 0;
        check(nq_attention_workspace_size(c, &desc, &ws_bytes), "nq_attention_workspace_size");
        std::vector<uint8_t> ws(ws_bytes + 64);
        void *wsp = reinterpret_cast<void *>(((uintptr_t)ws.data() + 63) & ~(uintptr_t)63);
        const Time fused = time_it(repeat, min_s, [&] {
            check(nq_attention_decode(c, &desc, wsp, ws_bytes, nullptr), "nq_attention_decode");
        });
        std::vector<float> fused_out(out16.size());
        for (size_t i = 0; i < out16.size(); ++i) fused_out[i] = nq::f16_to_f32(out16[i]);

        // Unfused: every block decoded to fp16, then the fp16 attention over that.
        std::vector<uint16_t> kd((size_t)B * KV * kept * D), vd(kd.size());
        std::vector<float> out_u(qf.size()), lse_u(lse.size());
        auto unfused_step = [&] {
            for (uint32_t s = 0; s < B; ++s) {
                nq_kv_desc o;
                nq_kv_desc_init(&o);
                o.dtype = NQ_DTYPE_F16;
                o.num_tokens = kept;
                o.k = kd.data() + (size_t)s * KV * kept * D;
                o.v = vd.data() + (size_t)s * KV * kept * D;
                nq_layout_contiguous(&o.k_layout, kept, D);
                o.v_layout = o.k_layout;
                check(nq_decode(c, blocks[s].get(), 0, kept, &o, nullptr), "nq_decode");
            }
            fp16_attention(ak, threads, kd.data(), vd.data(), B, KV, QH / KV, kept, D, qf.data(), scale, out_u.data(),
                           lse_u.data());
        };
        const Time unfused = time_it(repeat, min_s, unfused_step);
        std::vector<float> out_f(qf.size()), lse_f(lse.size());
        const Time fp16 = time_it(repeat, min_s, [&] {
            fp16_attention(ak, threads, k.data(), v.data(), B, KV, QH / KV, T, D, qf.data(), scale, out_f.data(),
                           lse_f.data());
        });
        double lse_err = 0;
        for (size_t i = 0; i < lse.size(); ++i) lse_err = std::max(lse_err, (double)std::fabs(lse[i] - lse_u[i]));
        j.str("backend", "cpu").str("isa", nq_context_cpu_isa(c)).u64("threads", cfg.num_threads ? cfg.num_threads : 1);
        j.num("fused_ms", fused.cpu_ms).num("unfused_ms", unfused.cpu_ms).num("fp16_ms", fp16.cpu_ms);
        j.num("fused_wall_ms", fused.wall_ms).num("unfused_wall_ms", unfused.wall_ms).num("fp16_wall_ms", fp16.wall_ms);
        j.num("unfused_over_fused", unfused.cpu_ms / fused.cpu_ms).num("fp16_over_fused", fp16.cpu_ms / fused.cpu_ms);
        j.u64("bytes_read", resident).u64("fp16_bytes_read", fp16_bytes);
        j.num("max_rel_err", rel_err(fused_out, out_u, D)).num("max_lse_err", lse_err);
        j.num("rel_err_vs_uncompressed", rel_err(fused_out, out_f, D));
        j.str("times", "CPU ms per call (process CPU time), median; *_wall_ms: elapsed");
    } else {
#if defined(NQ_BENCH_CUDA)
        // Device blocks, queries and outputs; CUDA events around each call on one stream.
        std::vector<BlockPtr> dev_blocks(B);
        std::vector<const void *> dev_images(B);
        for (uint32_t s = 0; s < B; ++s) {
            nq_block *b = nullptr;
            check(nq_block_copy(c, blocks[s].get(), NQ_MEMORY_CUDA, cfg.device, nullptr, 0, nullptr, &b), "nq_block_copy");
            dev_blocks[s].reset(b);
            size_t bytes = 0;
            check(nq_block_data(b, &dev_images[s], &bytes), "nq_block_data");
        }
        void *d_images = nullptr, *d_indptr = nullptr, *d_q = nullptr, *d_out = nullptr, *d_lse = nullptr;
        auto cu = [](cudaError_t e, const char *what) {
            if (e != cudaSuccess) throw CliError(std::string(what) + ": " + cudaGetErrorString(e));
        };
        cu(cudaMalloc(&d_images, B * sizeof(void *)), "cudaMalloc");
        cu(cudaMalloc(&d_indptr, (B + 1) * sizeof(uint32_t)), "cudaMalloc");
        cu(cudaMalloc(&d_q, q16.size() * 2), "cudaMalloc");
        cu(cudaMalloc(&d_out, out16.size() * 2), "cudaMalloc");
        cu(cudaMalloc(&d_lse, lse.size() * 4), "cudaMalloc");
        cu(cudaMemcpy(d_images, dev_images.data(), B * sizeof(void *), cudaMemcpyHostToDevice), "cudaMemcpy");
        cu(cudaMemcpy(d_indptr, indptr.data(), (B + 1) * sizeof(uint32_t), cudaMemcpyHostToDevice), "cudaMemcpy");
        cu(cudaMemcpy(d_q, q16.data(), q16.size() * 2, cudaMemcpyHostToDevice), "cudaMemcpy");
        nq_attention_desc dd = desc;
        dd.memory = NQ_MEMORY_CUDA;
        dd.device = cfg.device;
        dd.block_images = static_cast<const void *const *>(d_images);
        dd.block_indptr = static_cast<const uint32_t *>(d_indptr);
        dd.q = d_q;
        dd.out = d_out;
        dd.lse = static_cast<float *>(d_lse);
        size_t ws_bytes = 0;
        check(nq_attention_workspace_size(c, &dd, &ws_bytes), "nq_attention_workspace_size");
        void *d_ws = nullptr;
        if (ws_bytes) cu(cudaMalloc(&d_ws, ws_bytes), "cudaMalloc");
        cudaStream_t st;
        cu(cudaStreamCreate(&st), "cudaStreamCreate");
        cudaEvent_t e0, e1;
        cu(cudaEventCreate(&e0), "cudaEventCreate");
        cu(cudaEventCreate(&e1), "cudaEventCreate");
        auto device_ms = [&](auto fn) {
            fn();
            cu(cudaStreamSynchronize(st), "cudaStreamSynchronize");
            std::vector<float> ms;
            const double start = now(CLOCK_MONOTONIC);
            while (ms.size() < repeat || now(CLOCK_MONOTONIC) - start < min_s) {
                cu(cudaEventRecord(e0, st), "cudaEventRecord");
                fn();
                cu(cudaEventRecord(e1, st), "cudaEventRecord");
                cu(cudaEventSynchronize(e1), "cudaEventSynchronize");
                float t = 0;
                cu(cudaEventElapsedTime(&t, e0, e1), "cudaEventElapsedTime");
                ms.push_back(t);
                if (ms.size() >= 1000) break;
            }
            std::sort(ms.begin(), ms.end());
            return (double)ms[ms.size() / 2];
        };
        const double fused_ms = device_ms([&] { check(nq_attention_decode(c, &dd, d_ws, ws_bytes, st), "nq_attention_decode"); });
        // The decode half of the unfused step (fp16 attention on the GPU is the engine's).
        void *d_k = nullptr, *d_v = nullptr;
        cu(cudaMalloc(&d_k, (size_t)KV * kept * D * 2), "cudaMalloc");
        cu(cudaMalloc(&d_v, (size_t)KV * kept * D * 2), "cudaMalloc");
        const double decode_ms = device_ms([&] {
            for (uint32_t s = 0; s < B; ++s) {
                nq_kv_desc o;
                nq_kv_desc_init(&o);
                o.dtype = NQ_DTYPE_F16;
                o.memory = NQ_MEMORY_CUDA;
                o.device = cfg.device;
                o.num_tokens = kept;
                o.k = d_k;
                o.v = d_v;
                nq_layout_contiguous(&o.k_layout, kept, D);
                o.v_layout = o.k_layout;
                check(nq_decode(c, dev_blocks[s].get(), 0, kept, &o, st), "nq_decode");
            }
        });
        std::vector<uint16_t> got(out16.size());
        cu(cudaMemcpy(got.data(), d_out, got.size() * 2, cudaMemcpyDeviceToHost), "cudaMemcpy");
        // The CPU result of the same call is the reference here.
        check(nq_attention_decode(c, &desc, nullptr, 0, nullptr), "nq_attention_decode (cpu)");
        std::vector<float> gf(got.size()), cf(got.size());
        for (size_t i = 0; i < got.size(); ++i) {
            gf[i] = nq::f16_to_f32(got[i]);
            cf[i] = nq::f16_to_f32(out16[i]);
        }
        j.str("backend", "cuda").num("fused_ms", fused_ms).num("decode_to_fp16_ms", decode_ms);
        j.null("unfused_ms").null("fp16_ms");
        j.u64("bytes_read", resident).u64("fp16_bytes_read", fp16_bytes);
        j.num("fused_gbps", resident / (fused_ms * 1e-3) / 1e9);
        j.num("max_rel_err", rel_err(gf, cf, D));
        j.str("times", "device ms per call (CUDA events), median");
        cudaFree(d_k);
        cudaFree(d_v);
        cudaFree(d_ws);
        cudaFree(d_images);
        cudaFree(d_indptr);
        cudaFree(d_q);
        cudaFree(d_out);
        cudaFree(d_lse);
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
        cudaStreamDestroy(st);
#endif
    }
    j.end_object();
    std::fputs(j.text().c_str(), stdout);
    std::fputs("\n", stdout);
    return 0;
}

}  // namespace nqcli
