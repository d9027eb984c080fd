// nq roundtrip: compress -> archive -> deserialise -> decode, with the quality (SNR
// over the kept tokens), the sizes, the speed and a digest of the resident bytes.
#include <cmath>
#include <cstdio>
#include <xxhash.h>

#include "commands.h"
#include "help_text.h"
#include "json_writer.h"
#include "pipeline.h"

namespace nqcli {
namespace {

std::vector<OptSpec> specs() {
    std::vector<OptSpec> s = kv_input_specs(true);
    for (const OptSpec &o : pipeline_specs()) s.push_back(o);
    return s;
}

double snr_db(double signal, double noise) {
    if (noise <= 0.0) return INFINITY;
    return 10.0 * std::log10(signal / noise);
}

int run(const Args &a) {
    if (!a.positional().empty()) throw CliError("unexpected argument '" + a.positional()[0] + "'");
    const PipelineOptions opt = parse_pipeline(a);
    KvData kv = load_kv(a, true);
    ContextPtr ctx = make_context(opt, kv.head_dim, kv.heads, kv.layers);
    const uint32_t H = kv.heads, D = kv.head_dim;

    double t_compress = 0, t_serialize = 0, t_deserialize = 0, t_decode = 0;
    uint64_t resident = 0, archive = 0, kept_fp16 = 0, kept_tokens = 0;
    double k_sig = 0, k_noise = 0, v_sig = 0, v_noise = 0;
    std::vector<uint64_t> digests;
    std::vector<float> kout, vout, row(D);
    std::vector<int64_t> pos;
    for (uint32_t l = 0; l < kv.layers; ++l) {
        double t0 = now_seconds();
        BlockPtr blk = compress_layer(ctx.get(), kv, l);
        t_compress += now_seconds() - t0;
        uint64_t dg = 0;
        check(nq_block_digest(blk.get(), &dg), "nq_block_digest");
        digests.push_back(dg);
        nq_block_info info = block_info(blk.get());
        resident += info.resident_bytes;

        t0 = now_seconds();
        std::vector<uint8_t> arc = serialize_block(ctx.get(), blk.get());
        t_serialize += now_seconds() - t0;
        archive += arc.size();
        nq_block *back_raw = nullptr;
        t0 = now_seconds();
        check(nq_block_deserialize(ctx.get(), arc.data(), arc.size(), &back_raw), strf("deserialising layer %u", l));
        t_deserialize += now_seconds() - t0;
        BlockPtr back(back_raw);
        uint64_t dg2 = 0;
        check(nq_block_digest(back.get(), &dg2), "nq_block_digest");
        if (dg2 != dg) throw CliError(strf("layer %u: the deserialised block differs from the compressed one", l));

        const uint32_t K = info.tokens_kept;
        kept_tokens += K;
        kout.assign((size_t)H * K * D, 0.0f);
        vout.assign((size_t)H * K * D, 0.0f);
        nq_kv_desc out;
        nq_kv_desc_init(&out);
        out.dtype = NQ_DTYPE_F32;
        out.num_tokens = K;
        out.k = kout.data();
        out.v = vout.data();
        nq_layout_contiguous(&out.k_layout, K, D);
        out.v_layout = out.k_layout;
        t0 = now_seconds();
        check(nq_decode(ctx.get(), back.get(), 0, K, &out, nullptr), strf("decoding layer %u", l));
        t_decode += now_seconds() - t0;
        kept_fp16 += 4ull * H * K * D;

        // Quality: every decoded row against the input row at its original position.
        pos.resize(K);
        for (uint32_t h = 0; h < H; ++h) {
            check(nq_block_positions(back.get(), h, 0, K, pos.data()), "nq_block_positions");
            for (uint32_t j = 0; j < K; ++j) {
                int64_t t = kv.token_of_position(l, pos[j]);
                if (t < 0) throw CliError(strf("layer %u head %u: decoded position %lld is not an input position", l, h,
                                               (long long)pos[j]));
                for (int which = 0; which < 2; ++which) {
                    kv.load_row(which == 1, l, h, (uint32_t)t, row.data());
                    const float *dec = (which ? vout.data() : kout.data()) + ((size_t)h * K + j) * D;
                    double s = 0, n = 0;
                    for (uint32_t d = 0; d < D; ++d) {
                        double x = row[d], e = (double)dec[d] - x;
                        s += x * x;
                        n += e * e;
                    }
                    (which ? v_sig : k_sig) += s;
                    (which ? v_noise : k_noise) += n;
                }
            }
        }
    }
    // The digest of the whole run: XXH3-64 of the per-block digests as 8 LE bytes each.
    std::vector<uint8_t> cat;
    for (uint64_t d : digests)
        for (int b = 0; b < 8; ++b) cat.push_back((uint8_t)(d >> (8 * b)));
    const uint64_t digest = XXH3_64bits(cat.data(), cat.size());
    const std::string digest_hex = strf("%016llx", (unsigned long long)digest);

    nq_layer_params lp{};
    lp.size = sizeof lp;
    check(nq_context_layer_params(ctx.get(), 0, &lp), "nq_context_layer_params");
    const uint64_t fp16 = kv.fp16_bytes();
    const double ratio = (double)fp16 / (double)archive, resident_ratio = (double)fp16 / (double)resident;
    const double k_snr = snr_db(k_sig, k_noise), v_snr = snr_db(v_sig, v_noise);
    auto gbps = [](uint64_t bytes, double s) { return s > 0 ? bytes / s / 1e9 : 0.0; };
    const char *backend = backend_name(nq_context_backend(ctx.get()));
    const char *isa = nq_context_cpu_isa(ctx.get());
    const uint32_t threads = opt.threads ? opt.threads : 1;

    if (a.has("json")) {
        JsonWriter j;
        j.begin_object().str("input", kv.source).str("dtype", nq_dtype_label(kv.dtype));
        j.u64("layers", kv.layers).u64("kv_heads", H).u64("tokens", kv.tokens).u64("head_dim", D);
        j.u64("tokens_kept", kept_tokens / kv.layers).str("preset", nq_preset_name(opt.preset));
        j.u64("k_bits", lp.k_bits).u64("v_bits", lp.v_bits).flt("evict", lp.evict_fraction);
        j.str("evict_mode", evict_mode_name(opt.evict_mode)).str("codec", codec_name(opt.codec));
        j.str("rope", rope_mode_name(opt.rope));
        j.num("ratio", ratio).num("resident_ratio", resident_ratio).u64("bytes_in", fp16).u64("bytes_out", archive);
        j.u64("resident_bytes", resident).num("k_snr_db", k_snr).num("v_snr_db", v_snr);
        j.num("compress_gbps", gbps(fp16, t_compress)).num("decode_gbps", gbps(kept_fp16, t_decode));
        j.num("serialize_gbps", gbps(fp16, t_serialize)).num("deserialize_gbps", gbps(fp16, t_deserialize));
        j.str("digest", digest_hex).str("digest_of", "xxh3_64 of the nq_block_digest of every block, 8 LE bytes each");
        j.begin_array("block_digests");
        for (uint64_t d : digests) j.str(nullptr, strf("%016llx", (unsigned long long)d));
        j.end_array();
        j.str("backend", backend).str("isa", isa).u64("threads", threads).end_object();
        std::fputs(j.text().c_str(), stdout);
        return 0;
    }
    std::printf("roundtrip of %s: %u layers x %u KV heads x %u tokens x head_dim %u (%s)\n", kv.source.c_str(),
                kv.layers, H, kv.tokens, D, nq_dtype_label(kv.dtype));
    std::printf("  preset %s: K %u bits, V %u bits, evict %.0f%% (%s), codec %s, rope %s; %s backend, isa %s, %u "
                "thread(s)\n",
                nq_preset_name(opt.preset), lp.k_bits, lp.v_bits, 100.0 * lp.evict_fraction,
                evict_mode_name(opt.evict_mode), codec_name(opt.codec), rope_mode_name(opt.rope), backend, isa,
                threads);
    std::printf("  tokens kept per head  %llu of %u\n", (unsigned long long)(kept_tokens / kv.layers), kv.tokens);
    std::printf("  bytes in (fp16 K+V)   %s\n", group_digits(fp16).c_str());
    std::printf("  archive bytes         %s   ratio %.2fx\n", group_digits(archive).c_str(), ratio);
    std::printf("  resident bytes        %s   ratio %.2fx\n", group_digits(resident).c_str(), resident_ratio);
    std::printf("  SNR over kept tokens  K %.2f dB, V %.2f dB\n", k_snr, v_snr);
    std::printf("  compress %.3f GB/s, decode %.3f GB/s, serialize %.3f GB/s, deserialize %.3f GB/s (fp16 K+V)\n",
                gbps(fp16, t_compress), gbps(kept_fp16, t_decode), gbps(fp16, t_serialize),
                gbps(fp16, t_deserialize));
    std::printf("  digest %s (XXH3-64 of the block digests)\n", digest_hex.c_str());
    return 0;
}

}  // namespace

const Command kRoundtripCommand = {
    "roundtrip", "compress, archive, restore and decode; report ratio, SNR, speed, digest",
    "usage: nq roundtrip (--k K.npy --v V.npy | --synthetic gaussian|outlier [--layers L] [--kv-heads H]\n"
    "                    [--tokens T] [--head-dim D] [--seed S] [--dtype f16|bf16|f32])\n"
    "                    [compression options] [--backend B] [--isa I] [--threads N] [--json]\n\n"
    "Every layer is compressed into a block, serialised to its archive form, deserialised\n"
    "(the restored block must be byte-identical) and decoded; the decoded rows are compared\n"
    "with the input rows at their original positions.\n"
    "  ratio            fp16 bytes of K+V / bytes of all archives (every byte)\n"
    "  resident_ratio   fp16 bytes of K+V / bytes of all resident blocks\n"
    "  k_snr_db/v_snr_db  10 log10(sum x^2 / sum (x - decoded)^2) over the kept tokens\n"
    "  compress_gbps    fp16 bytes of the input K+V / wall time of nq_compress_kv\n"
    "  decode_gbps      fp16 bytes of the decoded K+V / wall time of nq_decode\n"
    "  digest           XXH3-64 of the nq_block_digest values (8 little-endian bytes each,\n"
    "                   in layer order): equal digests mean identical resident bytes\n\n"
    NQ_HELP_INPUT "or\n" NQ_HELP_SYNTHETIC NQ_HELP_PIPELINE NQ_HELP_RUNTIME,
    specs, run};

}  // namespace nqcli
