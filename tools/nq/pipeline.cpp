#include "pipeline.h"

#include <cstring>

#include "core/codecs.h"

namespace nqcli {

std::vector<OptSpec> pipeline_specs() {
    return {{"preset", true},     {"k-bits", true},     {"v-bits", true},       {"evict", true},
            {"evict-mode", true}, {"page-size", true},  {"codec", true},        {"rope", true},
            {"rope-theta", true}, {"rope-pairing", true}, {"rotary-dims", true}, {"isa", true},
            {"backend", true},    {"threads", true},    {"zstd-level", true},
            {"key-centering", false}, {"no-key-centering", false}};
}

namespace {
template <class T, class Choices> T pick_from(const Args &a, const char *name, T def, const Choices &choices) {
    if (!a.has(name)) return def;
    std::string v = a.str(name), all;
    for (const auto &c : choices) {
        if (v == c.first) return c.second;
        all += (all.empty() ? "" : ", ") + std::string(c.first);
    }
    throw CliError(std::string("--") + name + " '" + v + "': must be one of " + all);
}
template <class T>
T pick(const Args &a, const char *name, T def, std::initializer_list<std::pair<const char *, T>> choices) {
    return pick_from(a, name, def, choices);
}
}  // namespace

PipelineOptions parse_pipeline(const Args &a) {
    PipelineOptions o;
    if (a.has("preset")) check(nq_preset_from_name(a.str("preset").c_str(), &o.preset), "--preset");
    o.k_bits = (uint32_t)a.u64("k-bits", 0, 1, 8);
    o.v_bits = (uint32_t)a.u64("v-bits", 0, 1, 8);
    if (a.has("evict")) {
        o.evict = (float)a.real("evict", 0.0, 0.0, 1.0);
        if (!(o.evict < 1.0f)) throw CliError("--evict must be below 1 (a fraction of the tokens to drop)");
    }
    o.evict_mode = pick<nq_evict_mode>(a, "evict-mode", NQ_EVICT_PER_HEAD,
                                       {{"per-head", NQ_EVICT_PER_HEAD}, {"shared", NQ_EVICT_HEAD_SHARED},
                                        {"paged", NQ_EVICT_PAGED}});
    o.page_size = (uint32_t)a.u64("page-size", 0, 1, 1u << 20);
    std::vector<std::pair<const char *, nq_codec>> codecs;  // the codec table's names
    for (const nq::CodecTraits &t : nq::kCodecTable) codecs.push_back({t.name, (nq_codec)t.id});
    o.codec = pick_from<nq_codec>(a, "codec", NQ_CODEC_E8, codecs);
    o.rope = pick<nq_rope_mode>(a, "rope", NQ_ROPE_NONE,
                                {{"none", NQ_ROPE_NONE}, {"remove", NQ_ROPE_REMOVE}, {"keep", NQ_ROPE_KEEP}});
    o.pairing = pick<nq_rope_pairing>(a, "rope-pairing", NQ_ROPE_SPLIT_HALF,
                                      {{"split", NQ_ROPE_SPLIT_HALF}, {"interleaved", NQ_ROPE_INTERLEAVED}});
    o.theta = a.real("rope-theta", 10000.0, 1.0, 1e12);
    o.rotary_dims = (uint32_t)a.u64("rotary-dims", 0, 2, 512);
    o.isa = pick<nq_cpu_isa>(a, "isa", NQ_ISA_AUTO,
                             {{"auto", NQ_ISA_AUTO}, {"scalar", NQ_ISA_SCALAR}, {"avx2", NQ_ISA_AVX2},
                              {"avx512", NQ_ISA_AVX512}});
    o.backend = pick<nq_backend>(a, "backend", NQ_BACKEND_AUTO,
                                 {{"auto", NQ_BACKEND_AUTO}, {"cpu", NQ_BACKEND_CPU}, {"cuda", NQ_BACKEND_CUDA},
                                  {"hip", NQ_BACKEND_HIP}});
    o.threads = (uint32_t)a.u64("threads", 0, 0, 1024);
    if (a.has("zstd-level")) {
        std::string z = a.str("zstd-level");
        bool neg = !z.empty() && z[0] == '-';
        uint64_t v = parse_u64(neg ? z.substr(1) : z, "--zstd-level");
        if (v > 19 || (neg && v == 0)) throw CliError("--zstd-level " + z + ": must be 1..19, or -1 for no zstd");
        o.zstd_level = neg ? -1 : (int32_t)v;
    }
    if (a.has("key-centering") && a.has("no-key-centering"))
        throw CliError("--key-centering and --no-key-centering: give one of them");
    o.key_centering = !a.has("no-key-centering");
    return o;
}

ContextPtr make_context(const PipelineOptions &o, uint32_t head_dim, uint32_t heads, uint32_t layers) {
    nq_config c;
    nq_config_init(&c);
    c.head_dim = head_dim;
    c.num_kv_heads = heads;
    c.num_layers = layers;
    c.preset = o.preset;
    c.codec = o.codec;
    c.k_bits = o.k_bits;
    c.v_bits = o.v_bits;
    c.evict_fraction = o.evict;
    c.evict_mode = o.evict_mode;
    c.evict_page_size = o.page_size;
    c.rope.mode = o.rope;
    c.rope.pairing = o.pairing;
    c.rope.theta = o.theta;
    c.rope.rotary_dims = o.rotary_dims;
    c.backend = o.backend;
    c.cpu_isa = o.isa;
    c.num_threads = o.threads;
    c.archive_zstd_level = o.zstd_level;
    c.key_centering = o.key_centering ? 1u : 0u;
    nq_context *ctx = nullptr;
    check(nq_context_create(&c, &ctx), "creating the context");
    return ContextPtr(ctx);
}

ContextPtr reader_context(uint32_t head_dim, uint32_t heads) {
    nq_config c;
    nq_config_init(&c);
    c.head_dim = head_dim;
    c.num_kv_heads = heads;
    nq_context *ctx = nullptr;
    check(nq_context_create(&c, &ctx), "creating a context for the blocks");
    return ContextPtr(ctx);
}

nq_kv_desc layer_desc(const KvData &kv, uint32_t l) {
    nq_kv_desc d;
    nq_kv_desc_init(&d);
    d.dtype = kv.dtype;
    d.memory = NQ_MEMORY_HOST;
    d.layer = l;
    d.num_tokens = kv.tokens;
    d.k = const_cast<void *>(kv.k_layer(l));
    d.v = const_cast<void *>(kv.v_layer(l));
    nq_layout_contiguous(&d.k_layout, kv.tokens, kv.head_dim);
    d.v_layout = d.k_layout;
    d.positions = kv.layer_positions(l);
    return d;
}

BlockPtr compress_layer(nq_context *ctx, const KvData &kv, uint32_t l) {
    nq_kv_desc d = layer_desc(kv, l);
    nq_block *b = nullptr;
    check(nq_compress_kv(ctx, &d, nullptr, nullptr, &b), strf("compressing layer %u", l));
    return BlockPtr(b);
}

std::vector<uint8_t> serialize_block(nq_context *ctx, const nq_block *blk) {
    size_t cap = 0, n = 0;
    check(nq_block_serialize_bound(blk, &cap), "nq_block_serialize_bound");
    std::vector<uint8_t> out(cap);
    check(nq_block_serialize(ctx, blk, out.data(), out.size(), &n), "serialising a block");
    out.resize(n);
    return out;
}

nq_block_info block_info(const nq_block *blk) {
    nq_block_info i;
    std::memset(&i, 0, sizeof i);
    i.size = sizeof i;
    check(nq_block_get_info(blk, &i), "nq_block_get_info");
    return i;
}

ArchivePeek peek_archive(const uint8_t *p, size_t len) {
    ArchivePeek pk;
    nq_block_peek_info info{};
    info.size = sizeof info;
    if (nq_block_peek(p, len, &info) != NQ_OK || !info.is_archive) return pk;
    pk.head_dim = info.head_dim;
    pk.heads = info.num_heads;
    pk.layer = info.layer;
    pk.ok = true;
    return pk;
}

const char *codec_name(nq_codec c) {
    const nq::CodecTraits *t = nq::codec_traits((uint32_t)c);
    return t ? t->name : "unknown";
}

const char *evict_mode_name(nq_evict_mode m) {
    switch (m) {
    case NQ_EVICT_PER_HEAD: return "per-head";
    case NQ_EVICT_HEAD_SHARED: return "shared";
    case NQ_EVICT_PAGED: return "paged";
    }
    return "unknown";
}

const char *rope_mode_name(nq_rope_mode m) {
    switch (m) {
    case NQ_ROPE_NONE: return "none";
    case NQ_ROPE_REMOVE: return "remove";
    case NQ_ROPE_KEEP: return "keep";
    }
    return "unknown";
}

const char *backend_name(nq_backend b) {
    switch (b) {
    case NQ_BACKEND_AUTO: return "auto";
    case NQ_BACKEND_CPU: return "cpu";
    case NQ_BACKEND_CUDA: return "cuda";
    case NQ_BACKEND_HIP: return "hip";
    }
    return "unknown";
}

}  // namespace nqcli
