// The compression settings shared by compress, roundtrip and bench, and thin RAII
// wrappers over the library's handles.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cli.h"
#include "kv_input.h"
#include "nexusquant.h"

namespace nqcli {

struct ContextFree {
    void operator()(nq_context *c) const { nq_context_free(c); }
};
struct BlockFree {
    void operator()(nq_block *b) const { nq_block_free(b); }
};
using ContextPtr = std::unique_ptr<nq_context, ContextFree>;
using BlockPtr = std::unique_ptr<nq_block, BlockFree>;

struct PipelineOptions {
    nq_preset preset = NQ_PRESET_LOSSLESS;
    uint32_t k_bits = 0, v_bits = 0;  // 0 = the preset's
    float evict = -1.0f;              // < 0 = the preset's
    nq_evict_mode evict_mode = NQ_EVICT_PER_HEAD;
    uint32_t page_size = 0;
    nq_codec codec = NQ_CODEC_E8;
    nq_rope_mode rope = NQ_ROPE_NONE;
    nq_rope_pairing pairing = NQ_ROPE_SPLIT_HALF;
    double theta = 10000.0;
    uint32_t rotary_dims = 0;
    nq_cpu_isa isa = NQ_ISA_AUTO;
    nq_backend backend = NQ_BACKEND_AUTO;
    uint32_t threads = 0;
    int32_t zstd_level = 0;  // 0 = the library's default
    bool key_centering = true;
};

std::vector<OptSpec> pipeline_specs();
PipelineOptions parse_pipeline(const Args &args);
// A context for head_dim x heads with the options (layers only resolves overrides).
ContextPtr make_context(const PipelineOptions &o, uint32_t head_dim, uint32_t heads, uint32_t layers);
// A context that can decode / deserialise blocks of that shape (settings do not matter:
// a block carries its own).
ContextPtr reader_context(uint32_t head_dim, uint32_t heads);

// nq_kv_desc of layer l of kv: contiguous [heads][tokens][head_dim].
nq_kv_desc layer_desc(const KvData &kv, uint32_t l);

BlockPtr compress_layer(nq_context *ctx, const KvData &kv, uint32_t l);
std::vector<uint8_t> serialize_block(nq_context *ctx, const nq_block *blk);
nq_block_info block_info(const nq_block *blk);

// Header fields of an archive (nq_block_peek), to build a matching context before
// nq_block_deserialize checks everything.
struct ArchivePeek {
    bool ok = false;
    uint32_t head_dim = 0, heads = 0, layer = 0;
};
ArchivePeek peek_archive(const uint8_t *p, size_t len);

const char *codec_name(nq_codec c);
const char *evict_mode_name(nq_evict_mode m);
const char *rope_mode_name(nq_rope_mode m);
const char *backend_name(nq_backend b);

}  // namespace nqcli
