// nq bench: throughput of the whole pipeline and of its stages, next to memcpy.
#include <cstdio>
#include <cstring>

#include "attention_bench.h"
#include "commands.h"
#include "help_text.h"
#include "json_writer.h"
#include "pipeline.h"
#include "stage_bench.h"

namespace nqcli {
namespace {

std::vector<OptSpec> specs() {
    std::vector<OptSpec> s = kv_input_specs(true);
    for (const OptSpec &o : pipeline_specs()) s.push_back(o);
    s.push_back({"repeat", true});
    s.push_back({"min-seconds", true});
    s.push_back({"no-stages", false});
    for (const OptSpec &o : attention_bench_specs()) s.push_back(o);
    return s;
}

struct Row {
    const char *name;
    Timing t;
    uint64_t bytes;  // fp16-equivalent bytes per run
    double gbps() const { return t.median_s > 0 ? bytes / t.median_s / 1e9 : 0.0; }
};

int run(const Args &a) {
    if (!a.positional().empty()) throw CliError("unexpected argument '" + a.positional()[0] + "'");
    const PipelineOptions opt = parse_pipeline(a);
    const uint32_t repeat = (uint32_t)a.u64("repeat", 5, 1, 100000);
    const double min_s = a.real("min-seconds", 0.5, 0.0, 3600.0);
    if (a.has("attention")) return run_attention_bench(a, opt, repeat, min_s);
    const bool given = a.has("k") || a.has("v") || a.has("positions") || a.has("synthetic");
    KvData kv = given ? load_kv(a, true) : make_synthetic(a);  // default: synthetic gaussian
    ContextPtr ctx = make_context(opt, kv.head_dim, kv.heads, kv.layers);
    nq_context *c = ctx.get();
    const uint32_t L = kv.layers, H = kv.heads, D = kv.head_dim;
    const uint64_t fp16 = kv.fp16_bytes();

    // One untimed pass: blocks, archives and output buffers of the right sizes.
    std::vector<BlockPtr> blocks(L);
    std::vector<std::vector<uint8_t>> archives(L);
    uint64_t resident = 0, archive_total = 0, kept_fp16 = 0;
    std::vector<uint32_t> kept(L);
    for (uint32_t l = 0; l < L; ++l) {
        blocks[l] = compress_layer(c, kv, l);
        nq_block_info info = block_info(blocks[l].get());
        kept[l] = info.tokens_kept;
        resident += info.resident_bytes;
        kept_fp16 += 4ull * H * info.tokens_kept * D;
        size_t cap = 0;
        check(nq_block_serialize_bound(blocks[l].get(), &cap), "nq_block_serialize_bound");
        archives[l].resize(cap);
    }
    std::vector<size_t> archive_len(L);
    for (uint32_t l = 0; l < L; ++l) {
        check(nq_block_serialize(c, blocks[l].get(), archives[l].data(), archives[l].size(), &archive_len[l]),
              "nq_block_serialize");
        archive_total += archive_len[l];
    }
    std::vector<uint16_t> kdec((size_t)H * kv.tokens * D), vdec((size_t)H * kv.tokens * D);

    std::vector<Row> rows;
    std::vector<BlockPtr> scratch(L);
    rows.push_back({"compress", measure(repeat, min_s,
                                        [&] {
                                            for (uint32_t l = 0; l < L; ++l) {
                                                nq_kv_desc d = layer_desc(kv, l);
                                                nq_block *b = nullptr;
                                                check(nq_compress_kv(c, &d, nullptr, nullptr, &b), "nq_compress_kv");
                                                scratch[l].reset(b);
                                            }
                                        },
                                        [&] { for (auto &b : scratch) b.reset(); }),
                    fp16});
    rows.push_back({"decode", measure(repeat, min_s,
                                      [&] {
                                          for (uint32_t l = 0; l < L; ++l) {
                                              nq_kv_desc out;
                                              nq_kv_desc_init(&out);
                                              out.dtype = NQ_DTYPE_F16;
                                              out.num_tokens = kept[l];
                                              out.k = kdec.data();
                                              out.v = vdec.data();
                                              nq_layout_contiguous(&out.k_layout, kept[l], D);
                                              out.v_layout = out.k_layout;
                                              check(nq_decode(c, blocks[l].get(), 0, kept[l], &out, nullptr),
                                                    "nq_decode");
                                          }
                                      }),
                    kept_fp16});
    rows.push_back({"serialize", measure(repeat, min_s,
                                         [&] {
                                             for (uint32_t l = 0; l < L; ++l)
                                                 check(nq_block_serialize(c, blocks[l].get(), archives[l].data(),
                                                                          archives[l].size(), &archive_len[l]),
                                                       "nq_block_serialize");
                                         }),
                    fp16});
    rows.push_back({"deserialize", measure(repeat, min_s,
                                           [&] {
                                               for (uint32_t l = 0; l < L; ++l) {
                                                   nq_block *b = nullptr;
                                                   check(nq_block_deserialize(c, archives[l].data(), archive_len[l], &b),
                                                         "nq_block_deserialize");
                                                   scratch[l].reset(b);
                                               }
                                           },
                                           [&] { for (auto &b : scratch) b.reset(); }),
                    fp16});
    scratch.clear();
    // memcpy of the same byte count, buffers touched before timing.
    std::vector<uint8_t> src(fp16, 1), dst(fp16, 0);
    rows.push_back({"memcpy", measure(repeat, min_s, [&] { std::memcpy(dst.data(), src.data(), src.size()); }), fp16});

    std::vector<StageResult> stages;
    nq_layer_params lp{};
    lp.size = sizeof lp;
    check(nq_context_layer_params(c, 0, &lp), "nq_context_layer_params");
    if (!a.has("no-stages")) stages = stage_bench(kv, opt, lp.k_bits, repeat, min_s);

    const char *backend = backend_name(nq_context_backend(c));
    const char *isa = nq_context_cpu_isa(c);
    const uint32_t threads = opt.threads ? opt.threads : 1;
    if (a.has("json")) {
        JsonWriter j;
        j.begin_object().str("input", kv.source).str("dtype", nq_dtype_label(kv.dtype));
        j.u64("layers", L).u64("kv_heads", H).u64("tokens", kv.tokens).u64("head_dim", D);
        j.str("preset", nq_preset_name(opt.preset)).u64("k_bits", lp.k_bits).u64("v_bits", lp.v_bits);
        j.flt("evict", lp.evict_fraction).str("codec", codec_name(opt.codec)).str("rope", rope_mode_name(opt.rope));
        j.u64("bytes_in", fp16).u64("resident_bytes", resident).u64("archive_bytes", archive_total);
        j.num("ratio", (double)fp16 / (double)archive_total).num("resident_ratio", (double)fp16 / (double)resident);
        for (const Row &r : rows) j.num((std::string(r.name) + "_gbps").c_str(), r.gbps());
        j.begin_object("median_seconds");
        for (const Row &r : rows) j.num(r.name, r.t.median_s);
        j.end_object().begin_object("runs");
        for (const Row &r : rows) j.u64(r.name, r.t.runs.size());
        j.end_object().begin_array("stages");
        for (const StageResult &s : stages)
            j.begin_object().str("name", s.name).num("gbps", s.gbps).num("ns_per_vector", s.ns_per_vector)
                .num("median_seconds", s.seconds).u64("vectors", s.vectors).end_object();
        j.end_array().str("backend", backend).str("isa", isa).u64("threads", threads).end_object();
        std::fputs(j.text().c_str(), stdout);
        return 0;
    }
    std::printf("bench of %s: %u layers x %u KV heads x %u tokens x head_dim %u (%s)\n", kv.source.c_str(), L, H,
                kv.tokens, D, nq_dtype_label(kv.dtype));
    std::printf("preset %s: K %u bits, V %u bits, evict %.0f%%, codec %s; %s backend, isa %s, %u thread(s); ratio "
                "%.2fx (archive)\n",
                nq_preset_name(opt.preset), lp.k_bits, lp.v_bits, 100.0 * lp.evict_fraction, codec_name(opt.codec),
                backend, isa, threads, (double)fp16 / (double)archive_total);
    std::printf("median of >= %u runs and >= %.2f s per row; GB/s of fp16 K+V (decode: of the kept tokens)\n\n",
                repeat, min_s);
    std::printf("  %-20s %10s %12s %6s\n", "pipeline", "GB/s", "median s", "runs");
    for (const Row &r : rows)
        std::printf("  %-20s %10.3f %12.6f %6zu\n", r.name, r.gbps(), r.t.median_s, r.t.runs.size());
    if (!stages.empty()) {
        std::printf("\n  %-20s %10s %12s   (keys of layer 0, %llu vectors, src/core kernels)\n", "stage", "GB/s",
                    "ns/vector", (unsigned long long)stages[0].vectors);
        for (const StageResult &s : stages) std::printf("  %-20s %10.3f %12.1f\n", s.name.c_str(), s.gbps, s.ns_per_vector);
    }
    return 0;
}

}  // namespace

const Command kBenchCommand = {
    "bench", "throughput of compress/decode/serialize/deserialize and of each stage, vs memcpy",
    "usage: nq bench [--k K.npy --v V.npy | --synthetic gaussian|outlier ...] [compression options]\n"
    "                [--backend B] [--isa I] [--threads N] [--repeat N] [--min-seconds S] [--json]\n"
    "       nq bench --attention [--tokens N] [--batch B] [--q-heads H] [--kv-heads H] [--head-dim D]\n"
    "                [compression options] [--backend cpu|cuda] [--threads N] [--isa I]\n\n"
    "Times the library calls over all layers: nq_compress_kv, nq_decode (to fp16),\n"
    "nq_block_serialize, nq_block_deserialize, and memcpy of the same number of bytes in\n"
    "the same run. Each row runs at least --repeat times (default 5) and at least\n"
    "--min-seconds (default 0.5); the median run is reported as GB/s of fp16 K+V (decode:\n"
    "of the kept tokens). Then single stages (RoPE removal, Hadamard, quantise and\n"
    "dequantise of 8-float groups, inverse Hadamard) on the keys of layer 0, unless\n"
    "--no-stages. Without an input: --synthetic gaussian, 8 heads x 4096 tokens x 128.\n\n"
    "--attention: one decode step of attention (one query token per sequence) over one\n"
    "compressed block per sequence of gaussian fp16 K/V (default 32768 tokens, batch 1,\n"
    "32 query heads, 8 KV heads, head_dim 128: a Llama-3-8B layer): nq_attention_decode\n"
    "(fused), nq_decode to fp16 then attention over it (unfused), and attention over the\n"
    "uncompressed fp16 cache (fp16). Prints one JSON object: CPU ms per call (process CPU\n"
    "time; wall ms too), bytes read, and the error of fused against unfused.\n\n"
    NQ_HELP_INPUT "or\n" NQ_HELP_SYNTHETIC NQ_HELP_PIPELINE NQ_HELP_RUNTIME,
    specs, run};

}  // namespace nqcli
