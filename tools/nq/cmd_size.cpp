// nq size: the KV-cache arithmetic, from explicit dimensions or a model's config.json,
// and with a preset the bytes the compressed cache would take.
#include <cmath>
#include <cstdio>

#include "commands.h"
#include "json_reader.h"
#include "json_writer.h"
#include "pipeline.h"

namespace nqcli {
namespace {

std::vector<OptSpec> specs() {
    return {{"layers", true}, {"kv-heads", true}, {"head-dim", true}, {"tokens", true},
            {"dtype-bytes", true}, {"preset", true}, {"config", true}};
}

struct ModelShape {
    uint64_t layers = 0, kv_heads = 0, head_dim = 0;
    std::string model_type;
};

uint64_t config_uint(const JsonValue &obj, const char *key, const std::string &path) {
    const JsonValue *v = obj.get(key);
    if (!v || v->kind == JsonValue::Null) return 0;
    if (v->kind != JsonValue::Number || !(v->num >= 1) || v->num != std::floor(v->num) || v->num > 1e12)
        throw CliError(path + ": \"" + key + "\" is not a positive integer");
    return (uint64_t)v->num;
}

ModelShape read_config(const std::string &path) {
    std::vector<uint8_t> bytes = read_file(path);
    JsonValue root = json_parse(std::string(bytes.begin(), bytes.end()), path);
    if (root.kind != JsonValue::Object) throw CliError(path + ": not a JSON object");
    // Multimodal configs keep the language model's fields under "text_config".
    const JsonValue *cfg = &root;
    if (!root.get("num_hidden_layers") && root.get("text_config") && root.get("text_config")->kind == JsonValue::Object)
        cfg = root.get("text_config");
    ModelShape m;
    m.layers = config_uint(*cfg, "num_hidden_layers", path);
    if (!m.layers) throw CliError(path + ": no \"num_hidden_layers\"");
    const uint64_t attn_heads = config_uint(*cfg, "num_attention_heads", path);
    m.kv_heads = config_uint(*cfg, "num_key_value_heads", path);
    if (!m.kv_heads) m.kv_heads = attn_heads;
    if (!m.kv_heads) throw CliError(path + ": neither \"num_key_value_heads\" nor \"num_attention_heads\"");
    m.head_dim = config_uint(*cfg, "head_dim", path);
    if (!m.head_dim) {
        const uint64_t hidden = config_uint(*cfg, "hidden_size", path);
        if (!hidden || !attn_heads)
            throw CliError(path + ": no \"head_dim\", and no \"hidden_size\" / \"num_attention_heads\" to derive it");
        if (hidden % attn_heads)
            throw CliError(strf("%s: hidden_size %llu is not a multiple of num_attention_heads %llu", path.c_str(),
                                (unsigned long long)hidden, (unsigned long long)attn_heads));
        m.head_dim = hidden / attn_heads;
    }
    const JsonValue *mt = root.get("model_type");
    if (mt && mt->kind == JsonValue::String) m.model_type = mt->s;
    return m;
}

int run(const Args &a) {
    a.require({"tokens"});
    ModelShape m;
    if (a.has("config")) {
        m = read_config(a.str("config"));
    } else {
        a.require({"layers", "kv-heads", "head-dim"});
    }
    // Explicit dimensions win over the config's.
    m.layers = a.u64("layers", m.layers, 1, 1u << 20);
    m.kv_heads = a.u64("kv-heads", m.kv_heads, 1, 1u << 20);
    m.head_dim = a.u64("head-dim", m.head_dim, 1, 1u << 20);
    const uint64_t tokens = a.u64("tokens", 0, 1, (uint64_t)1 << 40);
    const uint64_t dtype_bytes = a.u64("dtype-bytes", 2, 1, 8);
    const uint64_t bytes = nq_kv_cache_bytes(m.layers, m.kv_heads, m.head_dim, tokens, dtype_bytes);

    const bool with_preset = a.has("preset");
    uint64_t compressed = 0;
    nq_preset preset = NQ_PRESET_LOSSLESS;
    nq_layer_params lp{};
    if (with_preset) {
        check(nq_preset_from_name(a.str("preset").c_str(), &preset), "--preset");
        if (tokens > 0xffffffffull) throw CliError("--tokens: the estimate needs at most 2^32-1 tokens per block");
        PipelineOptions o;
        o.preset = preset;
        ContextPtr ctx = make_context(o, (uint32_t)m.head_dim, (uint32_t)m.kv_heads, (uint32_t)m.layers);
        check(nq_estimate_bytes(ctx.get(), (uint32_t)m.layers, tokens, &compressed), "nq_estimate_bytes");
        lp.size = sizeof lp;
        check(nq_context_layer_params(ctx.get(), 0, &lp), "nq_context_layer_params");
    }
    const double gb = bytes / 1e9, gib = bytes / 1073741824.0;
    const double cgb = compressed / 1e9, cgib = compressed / 1073741824.0;
    const double ratio = compressed ? (double)bytes / (double)compressed : 0.0;

    if (a.has("json")) {
        JsonWriter j;
        j.begin_object();
        if (a.has("config")) j.str("config", a.str("config"));
        if (!m.model_type.empty()) j.str("model_type", m.model_type);
        j.u64("layers", m.layers).u64("kv_heads", m.kv_heads).u64("head_dim", m.head_dim).u64("tokens", tokens);
        j.u64("dtype_bytes", dtype_bytes).u64("bytes", bytes).num("gb", gb).num("gib", gib);
        if (with_preset) {
            j.str("preset", nq_preset_name(preset)).u64("k_bits", lp.k_bits).u64("v_bits", lp.v_bits);
            j.flt("evict", lp.evict_fraction).u64("compressed_bytes", compressed).num("compressed_gb", cgb);
            j.num("compressed_gib", cgib).num("ratio", ratio);
        } else {
            j.null("preset").null("compressed_bytes").null("compressed_gb").null("ratio");
        }
        j.end_object();
        std::fputs(j.text().c_str(), stdout);
        return 0;
    }
    if (a.has("config"))
        std::printf("model: %s (%s)\n", m.model_type.empty() ? "?" : m.model_type.c_str(), a.str("config").c_str());
    std::printf("KV cache: 2 (K, V) x %llu layers x %llu KV heads x head_dim %llu x %s tokens x %llu bytes\n",
                (unsigned long long)m.layers, (unsigned long long)m.kv_heads, (unsigned long long)m.head_dim,
                group_digits(tokens).c_str(), (unsigned long long)dtype_bytes);
    std::printf("  %-22s %22s bytes  %10.2f GB  %10.2f GiB\n", "uncompressed", group_digits(bytes).c_str(), gb, gib);
    if (with_preset) {
        std::string label = std::string("preset ") + nq_preset_name(preset);
        std::printf("  %-22s %22s bytes  %10.2f GB  %10.2f GiB  %.2fx\n", label.c_str(),
                    group_digits(compressed).c_str(), cgb, cgib, ratio);
        std::printf("  (K %u bits, V %u bits, evict %.0f%% of tokens; resident form, every byte counted)\n",
                    lp.k_bits, lp.v_bits, 100.0 * lp.evict_fraction);
    }
    return 0;
}

}  // namespace

const Command kSizeCommand = {
    "size", "KV-cache bytes of a model at a context length, and compressed with a preset",
    "usage: nq size --layers L --kv-heads H --head-dim D --tokens T [--dtype-bytes 2] [--preset P]\n"
    "       nq size --config config.json --tokens T [--preset P]\n\n"
    "Prints 2 x layers x kv_heads x head_dim x tokens x dtype_bytes in GB (1e9) and GiB;\n"
    "with --preset also the bytes of the compressed (resident) cache and the ratio.\n\n"
    "  --config FILE     a Hugging Face config.json: num_hidden_layers, num_key_value_heads\n"
    "                    (else num_attention_heads), head_dim (else hidden_size /\n"
    "                    num_attention_heads); explicit options override it\n"
    "  --tokens T        context length (tokens per sequence)\n"
    "  --dtype-bytes N   bytes per element of the uncompressed cache (default 2: fp16/bf16)\n"
    "  --preset P        lossless, high, balanced, max, S, M, L, XL\n"
    "  --json            one JSON object: bytes, gb, gib, compressed_bytes, compressed_gb,\n"
    "                    ratio, preset and the inputs\n\n"
    "example: nq size --layers 32 --kv-heads 8 --head-dim 128 --tokens 128000   (16.78 GB)\n",
    specs, run};

}  // namespace nqcli
