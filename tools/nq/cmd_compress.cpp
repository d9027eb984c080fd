// nq compress: K/V .npy files -> an nq container file of one archive per layer.
#include <cstdio>

#include "commands.h"
#include "container.h"
#include "help_text.h"
#include "json_writer.h"
#include "pipeline.h"

namespace nqcli {
namespace {

std::vector<OptSpec> specs() {
    std::vector<OptSpec> s = kv_input_specs(false);
    for (const OptSpec &o : pipeline_specs()) s.push_back(o);
    s.push_back({"output", true, "o"});
    return s;
}

int run(const Args &a) {
    a.require({"output"});
    if (!a.positional().empty()) throw CliError("unexpected argument '" + a.positional()[0] + "'");
    const PipelineOptions opt = parse_pipeline(a);
    KvData kv = load_kv(a, false);
    ContextPtr ctx = make_context(opt, kv.head_dim, kv.heads, kv.layers);

    std::vector<std::vector<uint8_t>> archives;
    uint64_t resident = 0, archive_total = 0, kept = 0;
    double seconds = 0.0;
    for (uint32_t l = 0; l < kv.layers; ++l) {
        double t0 = now_seconds();
        BlockPtr blk = compress_layer(ctx.get(), kv, l);
        seconds += now_seconds() - t0;
        nq_block_info info = block_info(blk.get());
        resident += info.resident_bytes;
        kept += info.tokens_kept;
        archives.push_back(serialize_block(ctx.get(), blk.get()));
        archive_total += archives.back().size();
    }
    const std::string out = a.str("output");
    const uint64_t file_bytes = container_write(out, archives);
    const uint64_t fp16 = kv.fp16_bytes();
    const double ratio = (double)fp16 / (double)file_bytes;
    nq_layer_params lp{};
    lp.size = sizeof lp;
    check(nq_context_layer_params(ctx.get(), 0, &lp), "nq_context_layer_params");

    if (a.has("json")) {
        JsonWriter j;
        j.begin_object().str("output", out).str("input", kv.source).str("dtype", nq_dtype_label(kv.dtype));
        j.u64("layers", kv.layers).u64("kv_heads", kv.heads).u64("tokens", kv.tokens).u64("head_dim", kv.head_dim);
        j.u64("tokens_kept", kept / kv.layers).str("preset", nq_preset_name(opt.preset));
        j.u64("k_bits", lp.k_bits).u64("v_bits", lp.v_bits).flt("evict", lp.evict_fraction);
        j.str("codec", codec_name(opt.codec)).str("rope", rope_mode_name(opt.rope));
        j.u64("bytes_in", fp16).u64("input_bytes", kv.k.size() + kv.v.size()).u64("bytes_out", file_bytes);
        j.u64("resident_bytes", resident).u64("archive_bytes", archive_total).num("ratio", ratio);
        j.num("resident_ratio", (double)fp16 / (double)resident).num("compress_seconds", seconds);
        j.num("compress_gbps", seconds > 0 ? fp16 / seconds / 1e9 : 0.0).end_object();
        std::fputs(j.text().c_str(), stdout);
        return 0;
    }
    std::printf("%s: %u layers x %u KV heads x %u tokens x head_dim %u (%s), preset %s: K %u bits, V %u bits, "
                "evict %.0f%%, codec %s\n",
                out.c_str(), kv.layers, kv.heads, kv.tokens, kv.head_dim, nq_dtype_label(kv.dtype),
                nq_preset_name(opt.preset), lp.k_bits, lp.v_bits, 100.0 * lp.evict_fraction, codec_name(opt.codec));
    std::printf("  in   %18s bytes (fp16 K+V)\n", group_digits(fp16).c_str());
    std::printf("  out  %18s bytes (the whole file)   ratio %.2fx\n", group_digits(file_bytes).c_str(), ratio);
    std::printf("       %18s bytes resident in memory   ratio %.2fx\n", group_digits(resident).c_str(),
                (double)fp16 / (double)resident);
    std::printf("  compress %.3f s, %.3f GB/s of fp16 K+V\n", seconds, seconds > 0 ? fp16 / seconds / 1e9 : 0.0);
    return 0;
}

}  // namespace

const Command kCompressCommand = {
    "compress", "compress K/V .npy files into an nq container file",
    "usage: nq compress --k K.npy --v V.npy -o FILE [--positions P.npy] [--preset P | --k-bits B --v-bits B]\n"
    "                   [--evict F] [--evict-mode per-head|shared|paged] [--codec e8|scalar]\n"
    "                   [--rope none|remove|keep] [--rope-theta X] [--rope-pairing split|interleaved]\n\n"
    "Compresses every layer into one block and writes their archive forms (delta positions,\n"
    "zstd, XXH3-64) to FILE, an nq container file (docs/FORMAT.md). Prints the ratio:\n"
    "fp16 bytes of K and V over every byte of FILE. Eviction ranks tokens by key norm.\n\n"
    "  -o, --output FILE     the container file to write\n" NQ_HELP_INPUT NQ_HELP_PIPELINE NQ_HELP_RUNTIME
    "  --json                one JSON object: ratio, bytes_in, bytes_out, resident_bytes, ...\n",
    specs, run};

}  // namespace nqcli
