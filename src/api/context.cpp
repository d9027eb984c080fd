// Contexts: config defaults, validation, preset resolution.
#include <cmath>
#include <cstdlib>
#include <new>

#include "../core/codecs.h"
#include "../core/hadamard.h"
#include "../backend.h"
#include "internal.h"
#include "../plan/presets.h"

namespace nq {

namespace {

void *default_alloc(void *, size_t bytes, size_t align, nq_memory mem, int32_t dev) {
    if (mem != NQ_MEMORY_HOST) {
        const BackendOps *be = backend_for(mem);
        return be && be->alloc ? be->alloc(bytes, align, dev) : nullptr;  // cudaMalloc / hipMalloc
    }
    if (align < sizeof(void *)) align = sizeof(void *);
    void *p = nullptr;
    if (posix_memalign(&p, align, bytes ? bytes : 1) != 0) return nullptr;
    return p;
}

void default_free(void *, void *p, nq_memory mem, int32_t dev) {
    if (mem != NQ_MEMORY_HOST) {
        const BackendOps *be = backend_for(mem);
        if (be && be->free) be->free(p, dev);
        return;
    }
    std::free(p);
}

}  // namespace

void *MemoryHooks::alloc(size_t bytes, size_t align, nq_memory memk, int32_t dev) const {
    if (a.alloc) return a.alloc(a.user, bytes, align, memk, dev);
    return default_alloc(nullptr, bytes, align, memk, dev);
}

void MemoryHooks::release(void *p, nq_memory memk, int32_t dev) const {
    if (!p) return;
    if (a.alloc) {
        if (a.free) a.free(a.user, p, memk, dev);
        return;
    }
    default_free(nullptr, p, memk, dev);
}

LayerParams layer_params(const nq_context *ctx, uint32_t layer) {
    const nq_config &c = ctx->cfg;
    LayerParams lp{c.k_bits, c.v_bits, c.evict_fraction, (uint32_t)c.sink_tokens, (uint32_t)c.recent_window,
                   (uint32_t)c.fp16_sinks, (uint32_t)c.fp16_window};
    bool adaptive = ctx->adaptive_bits;
    for (uint32_t i = 0; i < c.num_overrides; ++i) {
        const nq_layer_override &o = ctx->overrides[i];
        if (layer >= o.layer_begin && layer < o.layer_end) {
            if (o.k_bits) lp.k_bits = o.k_bits;
            if (o.v_bits) lp.v_bits = o.v_bits;
            if (o.k_bits || o.v_bits) adaptive = false;
            if (o.evict_fraction >= 0.0f) lp.evict_fraction = o.evict_fraction;
        }
    }
    lp.adaptive = adaptive;
    return lp;
}

namespace {

nq_status validate_config(nq_config &c) {
    if (!head_dim_supported(c.head_dim))
        return fail(NQ_ERR_UNSUPPORTED, "config.head_dim is %u: must be a multiple of 8 in 8..512", c.head_dim);
    if (c.num_kv_heads < 1 || c.num_kv_heads > 4096)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.num_kv_heads is %u: must be in 1..4096", c.num_kv_heads);
    if (c.num_q_heads == 0) c.num_q_heads = c.num_kv_heads;
    if (c.num_q_heads % c.num_kv_heads)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.num_q_heads (%u) is not a multiple of num_kv_heads (%u)",
                    c.num_q_heads, c.num_kv_heads);
    if (c.preset < NQ_PRESET_CUSTOM || c.preset > NQ_PRESET_XL)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.preset is %d: not a preset", (int)c.preset);
    if (!codec_traits((uint32_t)c.codec))
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.codec is %d: not NQ_CODEC_E8 or NQ_CODEC_SCALAR", (int)c.codec);
    if (c.k_bits > 8) return fail(NQ_ERR_UNSUPPORTED, "config.k_bits is %u: must be 1..8 (0 = preset)", c.k_bits);
    if (c.v_bits > 8) return fail(NQ_ERR_UNSUPPORTED, "config.v_bits is %u: must be 1..8 (0 = preset)", c.v_bits);
    if (!(c.evict_fraction < 1.0f) || std::isnan(c.evict_fraction))
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.evict_fraction is %g: must be < 1 (negative = preset)",
                    (double)c.evict_fraction);
    if (std::isnan(c.target_ratio) || c.target_ratio < 0.0f || c.target_ratio > 1000.0f)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.target_ratio is %g: must be 0 (off) or in (0, 1000]",
                    (double)c.target_ratio);
    if (c.evict_mode < NQ_EVICT_PER_HEAD || c.evict_mode > NQ_EVICT_PAGED)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.evict_mode is %d: not an nq_evict_mode", (int)c.evict_mode);
    const nq_rope &r = c.rope;
    if (r.reserved0)
        return fail(NQ_ERR_UNSUPPORTED, "config.rope.reserved0 is %u: must be 0 (reserved for later use)", r.reserved0);
    if (r.mode < NQ_ROPE_NONE || r.mode > NQ_ROPE_KEEP)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.rope.mode is %d: not an nq_rope_mode", (int)r.mode);
    if (r.pairing != NQ_ROPE_SPLIT_HALF && r.pairing != NQ_ROPE_INTERLEAVED)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.rope.pairing is %d: not an nq_rope_pairing", (int)r.pairing);
    if (c.rope.rotary_dims == 0) c.rope.rotary_dims = c.head_dim;
    if (r.rotary_dims > c.head_dim || r.rotary_dims % 2 || r.rotary_dims < 2)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.rope.rotary_dims is %u: must be even and in 2..head_dim (%u)",
                    r.rotary_dims, c.head_dim);
    if (!(r.theta > 1.0 && r.theta < 1e12))
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.rope.theta is %g: must be in (1, 1e12)", r.theta);
    if (r.scaling < NQ_ROPE_SCALING_NONE || r.scaling > NQ_ROPE_SCALING_YARN)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.rope.scaling is %d: not an nq_rope_scaling", (int)r.scaling);
    if (r.scaling != NQ_ROPE_SCALING_NONE && !(r.factor >= 1.0 && r.factor < 1e6))
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.rope.factor is %g: must be in [1, 1e6)", r.factor);
    if ((r.scaling == NQ_ROPE_SCALING_DYNAMIC_NTK || r.scaling == NQ_ROPE_SCALING_LLAMA3 ||
         r.scaling == NQ_ROPE_SCALING_YARN) &&
        r.original_max_position == 0)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.rope.original_max_position is 0: the scaling needs it");
    if (r.scaling == NQ_ROPE_SCALING_LLAMA3 && !(r.low_freq_factor > 0 && r.high_freq_factor > r.low_freq_factor))
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.rope.low_freq_factor/high_freq_factor: need 0 < low < high");
    if (r.scaling == NQ_ROPE_SCALING_YARN && !(r.beta_fast > 0 && r.beta_slow > 0 && r.attention_factor >= 0))
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.rope.beta_fast/beta_slow/attention_factor invalid");
    if (c.backend < NQ_BACKEND_AUTO || c.backend > NQ_BACKEND_HIP)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.backend is %d: not an nq_backend", (int)c.backend);
    if (c.cpu_isa < NQ_ISA_AUTO || c.cpu_isa > NQ_ISA_AVX512)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.cpu_isa is %d: not an nq_cpu_isa", (int)c.cpu_isa);
    if (c.num_threads > 1024) return fail(NQ_ERR_INVALID_ARGUMENT, "config.num_threads is %u: at most 1024", c.num_threads);
    if ((c.allocator.alloc == nullptr) != (c.allocator.free == nullptr))
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.allocator: set both alloc and free, or neither");
    if (c.num_overrides && !c.overrides)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.overrides is NULL but num_overrides is %u", c.num_overrides);
    if (c.num_overrides > 65536) return fail(NQ_ERR_INVALID_ARGUMENT, "config.num_overrides is %u: too many", c.num_overrides);
    for (uint32_t i = 0; i < c.num_overrides; ++i) {
        const nq_layer_override &o = c.overrides[i];
        if (o.layer_begin >= o.layer_end)
            return fail(NQ_ERR_INVALID_ARGUMENT, "config.overrides[%u]: layer_begin (%u) must be < layer_end (%u)", i,
                        o.layer_begin, o.layer_end);
        if (o.reserved0)
            return fail(NQ_ERR_UNSUPPORTED, "config.overrides[%u].reserved0 is %u: must be 0 (reserved for later use)",
                        i, o.reserved0);
        if (o.k_bits > 8 || o.v_bits > 8)
            return fail(NQ_ERR_UNSUPPORTED, "config.overrides[%u]: bits must be 1..8 (0 = keep)", i);
        if (!(o.evict_fraction < 1.0f) || std::isnan(o.evict_fraction))
            return fail(NQ_ERR_INVALID_ARGUMENT, "config.overrides[%u].evict_fraction is %g: must be < 1", i,
                        (double)o.evict_fraction);
    }
    if (c.archive_zstd_level > 19)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.archive_zstd_level is %d: at most 19", c.archive_zstd_level);
    if (c.key_centering > 1)
        return fail(NQ_ERR_INVALID_ARGUMENT, "config.key_centering is %u: must be 0 (off) or 1 (on)", c.key_centering);
    return NQ_OK;
}

// Releases what every backend keeps for the context (the CPU's thread pool, a GPU
// backend's RoPE tables), in reverse order of creation.
void release_backend_states(nq_context *ctx) {
    size_t nb = 0;
    const BackendOps *const *backends = backends_registered(&nb);
    for (size_t i = nb; i-- > 0;) {
        void *&st = backend_state(ctx, backends[i]->memory);
        if (backends[i]->state_release) backends[i]->state_release(ctx, st);
        st = nullptr;
    }
}

// Expands preset / target ratio into concrete values; explicit fields win.
void resolve_config(nq_config &c) {
    PresetValues pv = c.target_ratio > 0.0f ? plan_for_ratio(c.target_ratio, c.head_dim)
                                            : preset_values(c.preset, c.head_dim);
    if (c.k_bits == 0) c.k_bits = pv.k_bits;
    if (c.v_bits == 0) c.v_bits = pv.v_bits;
    if (c.evict_fraction < 0.0f) c.evict_fraction = pv.evict_fraction;
    if (c.sink_tokens < 0) c.sink_tokens = (int32_t)pv.sink_tokens;
    if (c.recent_window < 0) c.recent_window = (int32_t)pv.recent_window;
    if (c.fp16_sinks < 0) c.fp16_sinks = (int32_t)pv.fp16_sinks;
    if (c.fp16_window < 0) c.fp16_window = (int32_t)pv.fp16_window;
    // Tokens stored as fp16 must survive eviction.
    if (c.fp16_sinks > c.sink_tokens) c.sink_tokens = c.fp16_sinks;
    if (c.fp16_window > c.recent_window) c.recent_window = c.fp16_window;
    if (c.archive_zstd_level == 0) c.archive_zstd_level = 3;
}

}  // namespace
}  // namespace nq

using namespace nq;

extern "C" NQ_API uint32_t nq_version_number(void) { return NQ_VERSION_NUMBER; }
extern "C" NQ_API const char *nq_version_string(void) { return "0.1.0"; }

extern "C" NQ_API void nq_config_init(nq_config *c) {
    if (!c) return;
    std::memset(c, 0, sizeof *c);
    c->size = sizeof *c;
    c->num_kv_heads = 1;
    c->head_dim = 128;
    c->preset = NQ_PRESET_LOSSLESS;
    c->codec = NQ_CODEC_E8;
    c->evict_fraction = -1.0f;
    c->evict_mode = NQ_EVICT_PER_HEAD;
    c->sink_tokens = c->recent_window = c->fp16_sinks = c->fp16_window = -1;
    c->rope.mode = NQ_ROPE_REMOVE;
    c->rope.pairing = NQ_ROPE_SPLIT_HALF;
    c->rope.theta = 10000.0;
    c->rope.factor = 1.0;
    c->rope.low_freq_factor = 1.0;
    c->rope.high_freq_factor = 4.0;
    c->rope.beta_fast = 32.0;
    c->rope.beta_slow = 1.0;
    c->backend = NQ_BACKEND_AUTO;
    c->key_centering = 1;  // FORMAT.md 1.8: keys coded minus their per-(block, head) mean
}

extern "C" NQ_API void nq_kv_desc_init(nq_kv_desc *kv) {
    if (!kv) return;
    std::memset(kv, 0, sizeof *kv);
    kv->size = sizeof *kv;
    kv->dtype = NQ_DTYPE_F16;
}

extern "C" NQ_API void nq_score_desc_init(nq_score_desc *s) {
    if (!s) return;
    std::memset(s, 0, sizeof *s);
    s->size = sizeof *s;
    s->kind = NQ_SCORES_KEY_NORM;
    s->query_dtype = NQ_DTYPE_F16;
}

extern "C" NQ_API void nq_layout_contiguous(nq_layout *l, uint32_t num_tokens, uint32_t head_dim) {
    if (!l) return;
    std::memset(l, 0, sizeof *l);
    l->kind = NQ_LAYOUT_STRIDED;
    l->stride_head = (int64_t)num_tokens * head_dim;
    l->stride_token = head_dim;
    l->stride_dim = 1;
}

extern "C" NQ_API nq_status nq_context_create(const nq_config *cfg, nq_context **out) {
    clear_error();
    if (!out) return fail(NQ_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = nullptr;
    if (!cfg) return fail(NQ_ERR_INVALID_ARGUMENT, "cfg is NULL");
    nq_config c;
    nq_config_init(&c);
    NQ_TRY(copy_sized(cfg, &c, "nq_config"));
    NQ_TRY(validate_config(c));
    if (c.backend == NQ_BACKEND_CUDA || c.backend == NQ_BACKEND_HIP) {
        const BackendOps *be = backend_for_kind(c.backend);
        if (!be)
            return fail(NQ_ERR_BACKEND_UNAVAILABLE, "config.backend asks for %s, but this library was built without it",
                        c.backend == NQ_BACKEND_CUDA ? "CUDA" : "HIP");
        if (be->device_check) NQ_TRY(be->device_check(c.device));
    }
    const BitPolicy bits = bit_policy(c);  // before resolve_config fills k_bits/v_bits
    resolve_config(c);

    MemoryHooks mem{c.allocator};
    void *p = mem.alloc(sizeof(nq_context), alignof(nq_context));
    if (!p) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating the context (%zu bytes) failed", sizeof(nq_context));
    nq_context *ctx = new (p) nq_context();
    ctx->mem = mem;
    ctx->overrides = nullptr;
    if (c.num_overrides) {
        size_t bytes = sizeof(nq_layer_override) * c.num_overrides;
        ctx->overrides = static_cast<nq_layer_override *>(mem.alloc(bytes, alignof(nq_layer_override)));
        if (!ctx->overrides) {
            mem.release(p);
            return fail(NQ_ERR_OUT_OF_MEMORY, "allocating %u layer overrides failed", c.num_overrides);
        }
        std::memcpy(ctx->overrides, c.overrides, bytes);
    }
    c.overrides = ctx->overrides;
    ctx->cfg = c;
    ctx->backend = c.backend == NQ_BACKEND_AUTO ? NQ_BACKEND_CPU : c.backend;
    for (int i = 0; i < kMemoryKinds; ++i) ctx->backend_state[i] = nullptr;
    ctx->adaptive_bits = bits.adaptive;
    ctx->bits_extra = bits.extra;
    ctx->bits_target = bits.target;
    ctx->bits_floor = bits.floor;
    size_t nb = 0;
    const BackendOps *const *backends = backends_registered(&nb);
    for (size_t i = 0; i < nb; ++i) {
        if (!backends[i]->state_create) continue;
        nq_status st = backends[i]->state_create(ctx, &backend_state(ctx, backends[i]->memory));
        if (st != NQ_OK) {
            release_backend_states(ctx);
            mem.release(ctx->overrides);
            ctx->~nq_context();
            mem.release(p);
            return st;
        }
    }
    RopeSpec &r = ctx->rope;
    r.pairing = (uint8_t)c.rope.pairing;
    r.scaling = (uint8_t)c.rope.scaling;
    r.rotary_dims = c.rope.rotary_dims;
    r.original_max_position = c.rope.original_max_position;
    r.theta = c.rope.theta;
    r.factor = c.rope.factor;
    r.low_freq_factor = c.rope.low_freq_factor;
    r.high_freq_factor = c.rope.high_freq_factor;
    r.beta_fast = c.rope.beta_fast;
    r.beta_slow = c.rope.beta_slow;
    r.attention_factor = c.rope.attention_factor;
    *out = ctx;
    return NQ_OK;
}

extern "C" NQ_API void nq_context_free(nq_context *ctx) {
    if (!ctx) return;
    MemoryHooks mem = ctx->mem;
    release_backend_states(ctx);
    mem.release(ctx->overrides);
    ctx->~nq_context();
    mem.release(ctx);
}

extern "C" NQ_API nq_status nq_context_get_config(const nq_context *ctx, nq_config *out) {
    clear_error();
    if (!ctx) return fail(NQ_ERR_INVALID_ARGUMENT, "ctx is NULL");
    if (!out) return fail(NQ_ERR_INVALID_ARGUMENT, "out is NULL");
    return write_sized(ctx->cfg, out, "nq_config");
}

extern "C" NQ_API nq_status nq_context_layer_params(const nq_context *ctx, uint32_t layer, nq_layer_params *out) {
    clear_error();
    if (!ctx) return fail(NQ_ERR_INVALID_ARGUMENT, "ctx is NULL");
    if (!out) return fail(NQ_ERR_INVALID_ARGUMENT, "out is NULL");
    LayerParams lp = layer_params(ctx, layer);
    nq_layer_params v{};
    v.k_bits = lp.k_bits;
    v.v_bits = lp.v_bits;
    v.evict_fraction = lp.evict_fraction;
    v.sink_tokens = lp.sink_tokens;
    v.recent_window = lp.recent_window;
    v.fp16_sinks = lp.fp16_sinks;
    v.fp16_window = lp.fp16_window;
    return write_sized(v, out, "nq_layer_params");
}

extern "C" NQ_API const char *nq_context_cpu_isa(const nq_context *ctx) {
    if (!ctx) return "none";
    return backend_for(NQ_MEMORY_HOST)->variant(ctx);
}

extern "C" NQ_API nq_backend nq_context_backend(const nq_context *ctx) { return ctx ? ctx->backend : NQ_BACKEND_AUTO; }

extern "C" NQ_API uint64_t nq_kv_cache_bytes(uint64_t layers, uint64_t kv_heads, uint64_t head_dim, uint64_t tokens,
                                             uint64_t bytes_per_element) {
    return 2ull * layers * kv_heads * head_dim * tokens * bytes_per_element;
}
