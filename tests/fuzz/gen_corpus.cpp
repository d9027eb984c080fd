// Writes the seed corpus of the fuzz targets: a few small valid archives for
// fuzz_deserialize (one per storage variant: contiguous, u16 and u32 positions, per-head
// positions, fp16 rows, stored and zstd sections) and short inputs for fuzz_layout and
// fuzz_roundtrip. Usage: gen_fuzz_corpus DIR  (writes DIR/fuzz_<target>/seed_*)
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "nexusquant.h"

namespace {

bool write(const std::filesystem::path &p, const void *data, size_t n) {
    std::filesystem::create_directories(p.parent_path());
    std::ofstream f(p, std::ios::binary);
    f.write(static_cast<const char *>(data), (std::streamsize)n);
    return (bool)f;
}

struct Variant {
    const char *name;
    uint32_t heads, head_dim, tokens;
    nq_preset preset;
    nq_evict_mode evict;
    nq_codec codec;
    int32_t zstd_level;
    int32_t fp16_sinks, fp16_window;
    int64_t start, gap;  // positions start + i * gap
};

uint64_t lcg(uint64_t &s) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return s >> 33;
}

bool archive(const Variant &v, const std::filesystem::path &dir) {
    nq_config cfg;
    nq_config_init(&cfg);
    cfg.head_dim = v.head_dim;
    cfg.num_kv_heads = v.heads;
    cfg.preset = v.preset;
    cfg.evict_mode = v.evict;
    cfg.evict_page_size = 4;
    cfg.codec = v.codec;
    cfg.archive_zstd_level = v.zstd_level;
    cfg.fp16_sinks = v.fp16_sinks;
    cfg.fp16_window = v.fp16_window;
    cfg.sink_tokens = 1;
    cfg.recent_window = 2;
    nq_context *ctx = nullptr;
    if (nq_context_create(&cfg, &ctx) != NQ_OK) return false;
    const size_t n = (size_t)v.heads * v.tokens * v.head_dim;
    std::vector<float> k(n), val(n);
    uint64_t s = 7;
    for (size_t i = 0; i < n; ++i) {
        k[i] = (float)(lcg(s) % 2001) / 500.0f - 2.0f;
        val[i] = (float)(lcg(s) % 2001) / 500.0f - 2.0f;
    }
    std::vector<int64_t> pos(v.tokens);
    for (uint32_t i = 0; i < v.tokens; ++i) pos[i] = v.start + (int64_t)i * v.gap;
    nq_kv_desc kv;
    nq_kv_desc_init(&kv);
    kv.dtype = NQ_DTYPE_F32;
    kv.num_tokens = v.tokens;
    kv.k = k.data();
    kv.v = val.data();
    kv.positions = pos.data();
    nq_layout_contiguous(&kv.k_layout, v.tokens, v.head_dim);
    kv.v_layout = kv.k_layout;
    nq_block *b = nullptr;
    bool ok = nq_compress_kv(ctx, &kv, nullptr, nullptr, &b) == NQ_OK;
    if (ok) {
        size_t bound = 0, written = 0;
        nq_block_serialize_bound(b, &bound);
        std::vector<uint8_t> bytes(bound);
        ok = nq_block_serialize(ctx, b, bytes.data(), bytes.size(), &written) == NQ_OK &&
             write(dir / ("seed_" + std::string(v.name)), bytes.data(), written);
    }
    if (!ok) std::fprintf(stderr, "%s: %s\n", v.name, nq_last_error());
    nq_block_free(b);
    nq_context_free(ctx);
    return ok;
}

bool random_inputs(const std::filesystem::path &dir, int count, size_t bytes, uint64_t seed) {
    uint64_t s = seed;
    for (int i = 0; i < count; ++i) {
        std::vector<uint8_t> in(bytes);
        for (uint8_t &b : in) b = (uint8_t)lcg(s);
        if (i == 0) std::memset(in.data(), 0, in.size());  // every parameter at its first choice
        if (!write(dir / ("seed_" + std::to_string(i)), in.data(), in.size())) return false;
    }
    return true;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    const std::filesystem::path root = argv[1];
    const Variant variants[] = {
        {"contiguous_e8", 2, 8, 12, NQ_PRESET_LOSSLESS, NQ_EVICT_PER_HEAD, NQ_CODEC_E8, 3, 0, 0, 0, 1},
        {"gaps_u16_scalar", 1, 16, 10, NQ_PRESET_LOSSLESS, NQ_EVICT_PER_HEAD, NQ_CODEC_SCALAR, 3, 0, 0, 5, 3},
        {"span_u32_stored", 1, 8, 6, NQ_PRESET_LOSSLESS, NQ_EVICT_PER_HEAD, NQ_CODEC_E8, -1, 0, 0, 0, 20000},
        {"per_head_evict", 2, 8, 24, NQ_PRESET_MAX, NQ_EVICT_PER_HEAD, NQ_CODEC_E8, 3, 0, 0, 0, 1},
        {"shared_evict_fp16", 3, 8, 20, NQ_PRESET_BALANCED, NQ_EVICT_HEAD_SHARED, NQ_CODEC_E8, 1, 1, 2, 100, 1},
        {"paged_evict", 1, 24, 16, NQ_PRESET_MAX, NQ_EVICT_PAGED, NQ_CODEC_SCALAR, 9, 0, 0, 0, 1},
    };
    bool ok = true;
    for (const Variant &v : variants) ok &= archive(v, root / "fuzz_deserialize");
    ok &= random_inputs(root / "fuzz_layout", 6, 96, 11);
    ok &= random_inputs(root / "fuzz_roundtrip", 6, 160, 12);
    return ok ? 0 : 1;
}
