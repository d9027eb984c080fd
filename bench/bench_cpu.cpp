// Throughput of the CPU backend: GB/s of fp16 KV in (compress) and out (decode), per
// instruction set and thread count, next to memcpy of the same bytes.
//
//   nq_bench_cpu [--benchmark_filter=...]    (google-benchmark flags)
//
// One layer of one sequence: 8 KV heads x 4096 tokens x head_dim 128, fp16, contiguous
// [heads][tokens][dim], preset lossless (K 3 bits, V 2 bits, no eviction). Keys carry
// RoPE (rope:1 = NQ_ROPE_REMOVE, the default); rope:0 (NONE) shows the cost of the RoPE
// tables; centred:1 codes the keys minus their per-head mean (nq_config.key_centering,
// with RoPE removed only). Counters, in 1e9 bytes of fp16 K plus V:
//   GB       per second of wall time (all threads together)
//   GB_core  per second of CPU time of the whole process, i.e. per busy core; on a
//            shared machine this is the figure that does not depend on other load
#include <benchmark/benchmark.h>

#include <time.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "nexusquant.h"

namespace {

constexpr uint32_t kHeads = 8, kDim = 128, kTokens = 4096;
constexpr size_t kElems = (size_t)kHeads * kTokens * kDim;
constexpr size_t kBytesKV = 2 * kElems * 2;  // K and V, fp16

uint16_t to_f16(float f) {  // round to nearest even; the inputs are normal and small
    uint32_t x;
    std::memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, absx = x & 0x7fffffffu;
    if (absx < 0x38800000u) return (uint16_t)sign;
    uint32_t q = absx - 0x38000000u, rem = q & 0x1fffu;
    q >>= 13;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ++q;
    return (uint16_t)(sign | q);
}

struct Data {
    std::vector<uint16_t> k, v;
    Data() : k(kElems), v(kElems) {
        std::mt19937_64 rng(42);
        std::normal_distribution<float> n(0.0f, 1.0f);
        for (size_t i = 0; i < kElems; ++i) {
            // a few outlier channels in the keys, as real models have
            float scale = (i % kDim) % 37 == 5 ? 8.0f : 1.0f;
            k[i] = to_f16(n(rng) * scale);
            v[i] = to_f16(n(rng));
        }
    }
};

const Data &data() {
    static Data d;
    return d;
}

nq_context *make_context(nq_cpu_isa isa, uint32_t threads, nq_rope_mode rope, uint32_t centred) {
    nq_config cfg;
    nq_config_init(&cfg);
    cfg.head_dim = kDim;
    cfg.num_kv_heads = kHeads;
    cfg.preset = NQ_PRESET_LOSSLESS;
    cfg.cpu_isa = isa;
    cfg.num_threads = threads;
    cfg.rope.mode = rope;
    cfg.key_centering = centred;
    nq_context *ctx = nullptr;
    if (nq_context_create(&cfg, &ctx) != NQ_OK) return nullptr;
    return ctx;
}

nq_kv_desc kv_desc(const void *k, const void *v) {
    nq_kv_desc kv;
    nq_kv_desc_init(&kv);
    kv.dtype = NQ_DTYPE_F16;
    kv.num_tokens = kTokens;
    kv.k = const_cast<void *>(k);
    kv.v = const_cast<void *>(v);
    nq_layout_contiguous(&kv.k_layout, kTokens, kDim);
    kv.v_layout = kv.k_layout;
    return kv;
}

const char *isa_name(nq_cpu_isa isa) {
    return isa == NQ_ISA_AVX512 ? "avx512" : isa == NQ_ISA_AVX2 ? "avx2" : "scalar";
}

// Skips (with a message) when the CPU lacks the instruction set: the cap then falls back.
bool check_isa(benchmark::State &state, nq_context *ctx, nq_cpu_isa isa) {
    if (!ctx) {
        state.SkipWithError("nq_context_create failed");
        return false;
    }
    if (std::strcmp(nq_context_cpu_isa(ctx), isa_name(isa)) != 0) {
        state.SkipWithError("instruction set not available on this CPU");
        return false;
    }
    return true;
}

double process_cpu_seconds() {
    timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void report(benchmark::State &state, const char *label, double cpu_seconds) {
    const double bytes = (double)state.iterations() * (double)kBytesKV;
    state.SetBytesProcessed((int64_t)bytes);
    state.counters["GB"] = benchmark::Counter((double)kBytesKV / 1e9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["GB_core"] = cpu_seconds > 0 ? bytes / 1e9 / cpu_seconds : 0.0;
    state.SetLabel(label);
}

std::string label_of(nq_cpu_isa isa, uint32_t threads, uint32_t centred) {
    return std::string(isa_name(isa)) + " threads:" + std::to_string(threads) + (centred ? " centred" : "");
}

void BM_Compress(benchmark::State &state) {
    const auto isa = (nq_cpu_isa)state.range(0);
    const auto threads = (uint32_t)state.range(1);
    const auto rope = (nq_rope_mode)state.range(2);
    const auto centred = (uint32_t)state.range(3);
    nq_context *ctx = make_context(isa, threads, rope, centred);
    if (!check_isa(state, ctx, isa)) {
        nq_context_free(ctx);
        return;
    }
    const Data &d = data();
    nq_kv_desc kv = kv_desc(d.k.data(), d.v.data());
    double cpu = 0.0;
    for (auto _ : state) {
        const double c0 = process_cpu_seconds();
        nq_block *blk = nullptr;
        if (nq_compress_kv(ctx, &kv, nullptr, nullptr, &blk) != NQ_OK) {
            state.SkipWithError(nq_last_error());
            break;
        }
        benchmark::DoNotOptimize(blk);
        nq_block_free(blk);
        cpu += process_cpu_seconds() - c0;
    }
    report(state, label_of(isa, threads, centred).c_str(), cpu);
    nq_context_free(ctx);
}

void BM_Decode(benchmark::State &state) {
    const auto isa = (nq_cpu_isa)state.range(0);
    const auto threads = (uint32_t)state.range(1);
    const auto rope = (nq_rope_mode)state.range(2);
    const auto centred = (uint32_t)state.range(3);
    nq_context *ctx = make_context(isa, threads, rope, centred);
    if (!check_isa(state, ctx, isa)) {
        nq_context_free(ctx);
        return;
    }
    const Data &d = data();
    nq_kv_desc kv = kv_desc(d.k.data(), d.v.data());
    nq_block *blk = nullptr;
    if (nq_compress_kv(ctx, &kv, nullptr, nullptr, &blk) != NQ_OK) {
        state.SkipWithError(nq_last_error());
        nq_context_free(ctx);
        return;
    }
    nq_block_info info;
    info.size = sizeof info;
    nq_block_get_info(blk, &info);
    std::vector<uint16_t> ok(kElems), ov(kElems);
    nq_kv_desc out = kv_desc(ok.data(), ov.data());
    out.num_tokens = info.tokens_kept;
    double cpu = 0.0;
    for (auto _ : state) {
        const double c0 = process_cpu_seconds();
        if (nq_decode(ctx, blk, 0, info.tokens_kept, &out, nullptr) != NQ_OK) {
            state.SkipWithError(nq_last_error());
            break;
        }
        benchmark::ClobberMemory();
        cpu += process_cpu_seconds() - c0;
    }
    report(state, label_of(isa, threads, centred).c_str(), cpu);
    nq_block_free(blk);
    nq_context_free(ctx);
}

void BM_Memcpy(benchmark::State &state) {
    const Data &d = data();
    std::vector<uint16_t> ok(kElems), ov(kElems);
    double cpu = 0.0;
    for (auto _ : state) {
        const double c0 = process_cpu_seconds();
        std::memcpy(ok.data(), d.k.data(), kElems * 2);
        std::memcpy(ov.data(), d.v.data(), kElems * 2);
        benchmark::ClobberMemory();
        cpu += process_cpu_seconds() - c0;
    }
    report(state, "memcpy", cpu);
}

void isa_args(benchmark::internal::Benchmark *b) {
    for (int rope : {(int)NQ_ROPE_REMOVE, (int)NQ_ROPE_NONE})
        for (int isa : {(int)NQ_ISA_SCALAR, (int)NQ_ISA_AVX2, (int)NQ_ISA_AVX512})
            for (int threads : {1, 2}) {
                b->Args({isa, threads, rope, 0});
                if (rope == (int)NQ_ROPE_REMOVE) b->Args({isa, threads, rope, 1});
            }
    b->ArgNames({"isa", "threads", "rope", "centred"});
    b->Unit(benchmark::kMillisecond);
    b->UseRealTime();
}

}  // namespace

BENCHMARK(BM_Memcpy)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Compress)->Apply(isa_args);
BENCHMARK(BM_Decode)->Apply(isa_args);

BENCHMARK_MAIN();
