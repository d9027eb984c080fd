// Compression entry points: validation, planning the block, selection, and handing
// the work to the backend.
#include <algorithm>
#include <cstdio>
#include <new>
#include <vector>

#include "../backend.h"
#include "internal.h"
#include "../core/hadamard.h"
#include "../plan/bit_choice.h"
#include "../plan/block_plan.h"
#include "../format/block_rope.h"
#include "fp_env.h"

namespace nq {
namespace {

using Plan = BlockPlan;

// Which backend a descriptor's memory selects (config.backend AUTO follows the memory).
nq_status check_backend(const nq_context *ctx, nq_memory memory, const char *which) {
    const nq_backend b = ctx->cfg.backend;
    if (memory == NQ_MEMORY_HOST && (b == NQ_BACKEND_CUDA || b == NQ_BACKEND_HIP))
        return fail(NQ_ERR_INVALID_ARGUMENT, "%s.memory is HOST but config.backend is %s", which,
                    b == NQ_BACKEND_CUDA ? "CUDA" : "HIP");
    if (memory != NQ_MEMORY_HOST && b == NQ_BACKEND_CPU)
        return fail(NQ_ERR_INVALID_ARGUMENT, "%s.memory is device memory but config.backend is CPU", which);
    return NQ_OK;
}

// Positions 0, 1, 2, ... without materialising them (nq_estimate_bytes plans up to
// 2^32 - 1 tokens).
struct Iota {
    int64_t operator[](uint32_t i) const { return (int64_t)i; }
};

template <class Positions> uint32_t count_below(const Positions &positions, uint32_t T, uint32_t limit) {
    uint32_t n = 0;
    while (n < T && positions[n] < (int64_t)limit) ++n;
    return n;
}

// The header a compression of kv will produce (tokens_kept from the planned budget).
// Reads positions[0], positions[T - 1] and the leading positions below the sink
// limits only.
template <class Positions>
Plan make_plan(const nq_context *ctx, const nq_kv_desc &kv, const Positions &positions, bool first_chunk = true,
               bool scored = false) {
    Plan p;
    p.lp = layer_params(ctx, kv.layer);
    if (!first_chunk) {
        // Later chunks of a sequence hold no recent window and no fp16 window: those
        // tokens stop being recent at the next append, and the engine keeps its own
        // recent tokens at full precision until it hands them over. They are evicted at
        // the layer's fraction when the caller scores them (any kind, KEY_NORM too),
        // and only quantised otherwise (docs/DESIGN.md, "Sequences").
        p.lp.recent_window = 0;
        p.lp.fp16_window = 0;
        if (!scored) p.lp.evict_fraction = 0.0f;
    }
    const nq_config &c = ctx->cfg;
    const uint32_t T = kv.num_tokens;
    BlockHeader &h = p.h;
    h.codec = (uint8_t)c.codec;
    h.k_bits = (uint8_t)p.lp.k_bits;
    h.v_bits = (uint8_t)p.lp.v_bits;
    h.evict_mode = (uint8_t)c.evict_mode;
    h.head_dim = (uint16_t)c.head_dim;
    h.num_heads = (uint16_t)c.num_kv_heads;
    h.hadamard_block = (uint16_t)hadamard_block(c.head_dim);
    h.rope_mode = (uint8_t)c.rope.mode;
    set_header_rope(h, ctx->rope);  // the context's spec (nq_context_create copied it from c.rope)
    h.src_dtype = (uint8_t)kv.dtype;
    h.layer = kv.layer;
    h.tokens_in = T;
    h.rope_seq_len = kv.rope_seq_len ? kv.rope_seq_len : (uint32_t)(positions[T - 1] + 1);

    const uint32_t sinks = count_below(positions, T, p.lp.sink_tokens);
    p.budget = evict_budget(p.lp, T, sinks);
    const uint32_t K = planned_kept(ctx, kv, p.budget);
    p.evicting = K < T;
    h.tokens_kept = K;
    if (!p.evicting) {
        bool contiguous = positions[T - 1] - positions[0] == (int64_t)T - 1;
        h.flags = contiguous ? (uint32_t)kFlagPositionsContiguous : 0u;
        h.first_position = contiguous ? (uint64_t)positions[0] : 0;
    } else {
        h.flags = c.evict_mode == NQ_EVICT_PER_HEAD ? (uint32_t)kFlagPositionsPerHead : 0u;
    }
    if (!(h.flags & kFlagPositionsContiguous)) {
        // Stored positions are offsets from the first input position: u16 when the
        // block spans fewer than 65536 positions (half the bytes), else u32.
        h.first_position = (uint64_t)positions[0];
        if (positions[T - 1] - positions[0] < 65536) h.flags |= kFlagPositions16;
    }
    if (c.key_centering) h.flags |= kFlagKeyMean;
    h.fp16_sinks = std::min(count_below(positions, T, p.lp.fp16_sinks), K);
    h.fp16_window = std::min(p.lp.fp16_window, K - h.fp16_sinks);
    p.g = block_geometry(h);
    h.total_bytes = p.g.total;
    return p;
}

void set_bits(Plan &p, uint32_t kb, uint32_t vb) {
    p.h.k_bits = (uint8_t)kb;
    p.h.v_bits = (uint8_t)vb;
    p.g = block_geometry(p.h);
    p.h.total_bytes = p.g.total;
}

// A layer whose bits come from the data is planned, before any data is read, with the
// largest candidate pair: nq_compress_bound and nq_estimate_bytes are upper bounds.
void plan_bound_bits(const nq_context *ctx, Plan &p) {
    if (!p.lp.adaptive) return;
    uint32_t kb, vb;
    bound_bits(p.h, p.lp.k_bits, p.lp.v_bits, ctx->bits_extra, ctx->bits_floor, &kb, &vb);
    set_bits(p, kb, vb);
}

// The bits of a block whose layer chooses them from the data (host K/V only): the
// last queries when the caller gives them (NQ_SCORES_QUERIES in host memory), else
// statistics of the keys and values.
nq_status choose_block_bits(nq_context *ctx, const nq_kv_desc &kv, const nq_score_desc *sc_in,
                            const int64_t *positions, const uint32_t *kept, uint32_t rows, Workspace &ws, Plan &plan) {
    nq_score_desc sc;
    nq_score_desc_init(&sc);
    if (sc_in) NQ_TRY(copy_sized(sc_in, &sc, "nq_score_desc"));
    const bool queries = sc.kind == NQ_SCORES_QUERIES && sc.memory == NQ_MEMORY_HOST;
    if (queries) NQ_TRY(validate_scores(ctx, kv, sc));
    BitChoiceInput in{&kv, queries ? &sc : nullptr, positions, &plan.h, kept, rows,
                      plan.lp.k_bits, plan.lp.v_bits, ctx->bits_extra, ctx->bits_target, ctx->bits_floor};
    BitChoice bc;
    NQ_TRY(choose_bits(ctx, in, ws, &bc));
    set_bits(plan, bc.k_bits, bc.v_bits);
    return NQ_OK;
}

size_t item_workspace(const nq_context *ctx, uint32_t T) {
    const size_t H = ctx->cfg.num_kv_heads;
    return T * 8 + H * T * 4 * 2 + (size_t)T * 8 + score_scratch_bytes(T) + bit_choice_scratch_bytes(T) + 16 * 64;
}

const int64_t *fill_positions(const nq_kv_desc &kv, Workspace &ws) {
    int64_t *p = ws.take<int64_t>(kv.num_tokens);
    if (!p) return nullptr;
    for (uint32_t i = 0; i < kv.num_tokens; ++i) p[i] = kv.positions ? kv.positions[i] : kv.start_position + i;
    return p;
}

nq_status compress_one(nq_context *ctx, const nq_kv_desc *kv_in, const nq_score_desc *sc_in, const nq_buffer *dst,
                       Workspace &ws, void *stream, bool first_chunk, nq_block **out) {
    *out = nullptr;
    if (!kv_in) return fail(NQ_ERR_INVALID_ARGUMENT, "kv is NULL");
    nq_kv_desc kv;
    nq_kv_desc_init(&kv);
    NQ_TRY(copy_sized(kv_in, &kv, "nq_kv_desc"));
    NQ_TRY(validate_kv(ctx, kv, false, "kv"));
    NQ_TRY(check_backend(ctx, kv.memory, "kv"));
    if (kv.memory != NQ_MEMORY_HOST)
        return fail(NQ_ERR_INVALID_ARGUMENT, "kv.memory is device memory: one batch holds one kind of memory");
    const int64_t *positions = fill_positions(kv, ws);
    if (!positions) return fail(NQ_ERR_BUFFER_TOO_SMALL, "workspace too small (positions)");
    Plan plan = make_plan(ctx, kv, positions, first_chunk, sc_in != nullptr);
    const BackendOps &be = *backend_for(NQ_MEMORY_HOST);

    const uint32_t *kept = nullptr;
    uint32_t rows = 1;
    if (plan.evicting) {
        nq_score_desc sc;
        nq_score_desc_init(&sc);
        if (sc_in) NQ_TRY(copy_sized(sc_in, &sc, "nq_score_desc"));
        NQ_TRY(validate_scores(ctx, kv, sc));
        const size_t HT = (size_t)ctx->cfg.num_kv_heads * kv.num_tokens;
        float *scores = ws.take<float>(HT);
        uint32_t *kept_w = ws.take<uint32_t>(HT);
        if (!scores || !kept_w) return fail(NQ_ERR_BUFFER_TOO_SMALL, "workspace too small (scores)");
        NQ_TRY(be.scores(ctx, kv, &sc, positions, scores, ws));
        uint32_t K = 0;
        NQ_TRY(select_tokens(ctx, kv, plan.budget, scores, kept_w, &K, &rows, ws));
        if (K != plan.h.tokens_kept)
            return fail(NQ_ERR_INTERNAL, "selection kept %u tokens, planned %u", K, plan.h.tokens_kept);
        kept = kept_w;
    }
    if (plan.lp.adaptive) NQ_TRY(choose_block_bits(ctx, kv, sc_in, positions, kept, rows, ws, plan));

    nq_block *blk = nullptr;
    if (dst) {
        if (!dst->data) return fail(NQ_ERR_INVALID_ARGUMENT, "dst.data is NULL");
        if (dst->capacity < plan.g.total)
            return fail(NQ_ERR_BUFFER_TOO_SMALL, "dst.capacity is %zu bytes, the block needs %llu", dst->capacity,
                        (unsigned long long)plan.g.total);
        if ((uintptr_t)dst->data % 16) return fail(NQ_ERR_INVALID_ARGUMENT, "dst.data must be 16-byte aligned");
    }
    NQ_TRY(block_create(ctx->mem, plan.h, dst ? dst->data : nullptr, dst ? dst->capacity : 0, &blk));
    std::memset(blk->data, 0, plan.g.total);
    header_write(plan.h, blk->data);
    EncodeJob job{&kv, &blk->h, &blk->g, positions, kept, rows, blk->data};
    nq_status st = be.encode(ctx, job, stream);
    if (st != NQ_OK) {
        nq_block_free(blk);
        return st;
    }
    *out = blk;
    return NQ_OK;
}

struct ScratchGuard {
    const MemoryHooks &mem;
    void *p;
    ~ScratchGuard() { mem.release(p); }
};

// Host memory the device path keeps until its kernels are enqueued.
struct HostScratch {
    const MemoryHooks &mem;
    std::vector<void *> ptrs;
    ~HostScratch() {
        for (void *p : ptrs) mem.release(p);
    }
    void *take(size_t n) {
        void *p = mem.alloc(n ? n : 1, 64);
        if (p) ptrs.push_back(p);
        return p;
    }
};

// Plans one item of a device batch: validation, positions, the block (in device memory),
// and which tokens to keep (selected here from host scores, or on the device).
nq_status device_prepare(nq_context *ctx, const BackendOps &be, const nq_kv_desc *kv_in, const nq_score_desc *sc_in,
                         const nq_buffer *dst, bool first_chunk, HostScratch &scratch, nq_kv_desc &kv, BatchItem &gi,
                         nq_block **out) {
    *out = nullptr;
    if (!kv_in) return fail(NQ_ERR_INVALID_ARGUMENT, "kv is NULL");
    nq_kv_desc_init(&kv);
    NQ_TRY(copy_sized(kv_in, &kv, "nq_kv_desc"));
    NQ_TRY(validate_kv(ctx, kv, false, "kv"));
    NQ_TRY(check_backend(ctx, kv.memory, "kv"));
    if (kv.memory != be.memory)
        return fail(NQ_ERR_INVALID_ARGUMENT, "kv.memory is not %s memory: one batch holds one kind of memory", be.name);
    const uint32_t T = kv.num_tokens, H = ctx->cfg.num_kv_heads;
    int64_t *positions = static_cast<int64_t *>(scratch.take((size_t)T * 8));
    if (!positions) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating positions failed");
    for (uint32_t i = 0; i < T; ++i) positions[i] = kv.positions ? kv.positions[i] : kv.start_position + i;
    Plan plan = make_plan(ctx, kv, positions, first_chunk, sc_in != nullptr);

    std::memset(&gi, 0, sizeof gi);
    nq_score_desc_init(&gi.scores);
    const uint32_t *kept = nullptr;
    uint32_t rows = 1;
    if (plan.evicting) {
        nq_score_desc &sc = gi.scores;
        if (sc_in) NQ_TRY(copy_sized(sc_in, &sc, "nq_score_desc"));
        NQ_TRY(validate_scores(ctx, kv, sc));
        if (sc.kind == NQ_SCORES_GIVEN && sc.memory == NQ_MEMORY_HOST) {
            const size_t HT = (size_t)H * T;
            Workspace ws;
            ws.cap = HT * 8 + (size_t)T * 8 + 4 * 64;
            ws.base = static_cast<uint8_t *>(scratch.take(ws.cap));
            if (!ws.base) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating selection scratch failed");
            float *scores = ws.take<float>(HT);
            uint32_t *kept_w = ws.take<uint32_t>(HT);
            for (uint32_t h = 0; h < H; ++h)
                for (uint32_t t = 0; t < T; ++t)
                    scores[(size_t)h * T + t] =
                        sc.scores[(int64_t)h * sc.score_stride_head + (int64_t)t * sc.score_stride_token];
            uint32_t K = 0;
            NQ_TRY(select_tokens(ctx, kv, plan.budget, scores, kept_w, &K, &rows, ws));
            if (K != plan.h.tokens_kept)
                return fail(NQ_ERR_INTERNAL, "selection kept %u tokens, planned %u", K, plan.h.tokens_kept);
            kept = kept_w;
        } else if (sc.kind == NQ_SCORES_QUERIES && sc.memory == NQ_MEMORY_HOST) {
            return fail(NQ_ERR_UNSUPPORTED,
                        "scores.queries in host memory with K/V in %s memory: pass the queries in device memory",
                        be.name);
        } else {
            if (sc.kind == NQ_SCORES_QUERIES && !sc.query_positions && sc.num_queries > T)
                return fail(NQ_ERR_INVALID_ARGUMENT,
                            "scores.num_queries (%u) exceeds num_tokens (%u) and no query_positions given",
                            sc.num_queries, T);
            if (ctx->cfg.evict_mode == NQ_EVICT_PAGED)
                return fail(NQ_ERR_UNSUPPORTED,
                            "config.evict_mode PAGED with device-side scores: pass the scores in host memory");
            // The plan's budget, as select_tokens keeps it: sinks, the recent window,
            // and the rest of the planned tokens from the candidates between.
            gi.sel_lo = plan.budget.sinks;
            gi.sel_hi = T - plan.budget.window;
            gi.sel_m = plan.h.tokens_kept - plan.budget.sinks - plan.budget.window;
            gi.sel_rows = ctx->cfg.evict_mode == NQ_EVICT_PER_HEAD ? H : 1;
        }
    }
    if (dst) {
        if (!dst->data) return fail(NQ_ERR_INVALID_ARGUMENT, "dst.data is NULL");
        if (dst->capacity < plan.g.total)
            return fail(NQ_ERR_BUFFER_TOO_SMALL, "dst.capacity is %zu bytes, the block needs %llu", dst->capacity,
                        (unsigned long long)plan.g.total);
        if ((uintptr_t)dst->data % 16) return fail(NQ_ERR_INVALID_ARGUMENT, "dst.data must be 16-byte aligned");
    }
    nq_block *blk = nullptr;
    NQ_TRY(block_create_in(ctx->mem, plan.h, be.memory, kv.device, dst ? dst->data : nullptr, dst ? dst->capacity : 0,
                           &blk));
    blk->max_position = positions[T - 1];
    gi.job = EncodeJob{&kv, &blk->h, &blk->g, positions, kept, rows, blk->data};
    *out = blk;
    return NQ_OK;
}

// A batch whose K/V live in device memory: every item planned on the host, then one
// submission of the whole batch to the backend (BackendOps::compress) on `stream`.
nq_status device_batch(nq_context *ctx, const BackendOps &be, const nq_kv_desc *items, const nq_score_desc *scores, size_t n,
                    const nq_buffer *dst, void *workspace, size_t workspace_bytes, void *stream, bool first_chunk,
                    nq_block **out, nq_status *item_status) {
    HostScratch scratch{ctx->mem, {}};
    std::vector<nq_kv_desc> kvs(n);
    std::vector<BatchItem> gis(n);
    std::vector<size_t> live;
    nq_status first = NQ_OK;
    char first_msg[512] = "";
    for (size_t i = 0; i < n; ++i) {
        nq_status st = device_prepare(ctx, be, &items[i], scores ? &scores[i] : nullptr, dst ? &dst[i] : nullptr, first_chunk,
                                   scratch, kvs[i], gis[i], &out[i]);
        if (item_status) item_status[i] = st;
        if (st == NQ_OK) {
            live.push_back(i);
        } else if (first == NQ_OK) {
            first = st;
            if (n > 1)
                std::snprintf(first_msg, sizeof first_msg, "item %zu: %s", i, nq_last_error());
            else
                std::snprintf(first_msg, sizeof first_msg, "%s", nq_last_error());
        }
    }
    nq_status st = NQ_OK;
    if (!live.empty()) {
        std::vector<BatchItem> run;
        std::vector<nq_kv_desc> run_kv;
        for (size_t i : live) {
            run.push_back(gis[i]);
            run_kv.push_back(kvs[i]);
        }
        void *owned = nullptr;
        const int32_t device = run_kv[0].device;
        if (!workspace) {
            workspace_bytes = be.workspace_bound(ctx, run_kv.data(), run_kv.size());
            owned = ctx->mem.alloc(workspace_bytes, be.workspace_align, be.memory, device);
            if (!owned)
                st = fail(NQ_ERR_OUT_OF_MEMORY, "allocating %zu bytes of device workspace failed", workspace_bytes);
            workspace = owned;
        }
        if (st == NQ_OK) st = be.compress(ctx, run.data(), run.size(), workspace, workspace_bytes, stream);
        // Released after the work is enqueued: the allocator's free must not hand the
        // memory to other work before the stream has passed it (cudaFree waits).
        if (owned) ctx->mem.release(owned, be.memory, device);
        if (st != NQ_OK) {
            char msg[512];
            std::snprintf(msg, sizeof msg, "%s", nq_last_error());
            for (size_t i : live) {
                nq_block_free(out[i]);
                out[i] = nullptr;
                if (item_status) item_status[i] = st;
            }
            if (first == NQ_OK) {
                first = st;
                std::snprintf(first_msg, sizeof first_msg, "%s", msg);
            }
        }
    }
    if (first != NQ_OK) return fail(first, "%s", first_msg);
    clear_error();
    return NQ_OK;
}

// The memory kind of a caller's descriptor (read without copying the whole struct).
nq_memory memory_of(const nq_kv_desc *kv) {
    size_t sz;
    std::memcpy(&sz, kv, sizeof sz);
    if (sz < offsetof(nq_kv_desc, memory) + sizeof(nq_memory)) return NQ_MEMORY_HOST;
    return kv->memory;
}

// The backend of a batch whose K/V are in device memory and that compresses whole
// batches (BackendOps::compress); NULL for host memory or a memory kind without a
// backend (validation then names it).
const BackendOps *batch_backend(const nq_kv_desc *kv) {
    const nq_memory m = memory_of(kv);
    if (m == NQ_MEMORY_HOST) return nullptr;
    const BackendOps *be = backend_for(m);
    return be && be->compress ? be : nullptr;
}

// A caller's array of size-tagged structs is laid out with the caller's sizeof, which
// its first element's `size` tells: smaller for a caller built against an older header,
// larger for a newer one. Every element must carry that same size. An array of another
// size than this library's struct is copied (with the context's allocator) into an
// array of this library's structs - the fields an older caller lacks take their
// defaults, the unknown bytes of a newer caller's must be zero - so that the code past
// the entry points indexes it with the library's sizeof.
template <class T> struct SizedArray {
    const MemoryHooks &mem;
    const T *data = nullptr;
    T *owned = nullptr;
    explicit SizedArray(const MemoryHooks &m) : mem(m) {}
    SizedArray(const SizedArray &) = delete;
    SizedArray &operator=(const SizedArray &) = delete;
    ~SizedArray() { mem.release(owned); }
};

template <class T>
nq_status load_sized_array(const T *src, size_t n, size_t min_size, void (*init)(T *), const char *arg,
                           const char *type, SizedArray<T> &out) {
    out.data = src;
    if (!src || n == 0) return NQ_OK;
    const unsigned char *base = reinterpret_cast<const unsigned char *>(src);
    size_t stride;
    std::memcpy(&stride, base, sizeof stride);
    if (stride < min_size || stride % alignof(T) || check_struct_size(type, stride, sizeof(T), false) != NQ_OK)
        return fail(NQ_ERR_INVALID_ARGUMENT, "%s[0].size is %zu: call %s_init (the array is strided by it)", arg,
                    stride, type);
    for (size_t i = 1; i < n; ++i) {
        size_t s;
        std::memcpy(&s, base + i * stride, sizeof s);
        if (s != stride)
            return fail(NQ_ERR_INVALID_ARGUMENT,
                        "%s[%zu].size is %zu but %s[0].size is %zu: every element of an array must have the same size",
                        arg, i, s, arg, stride);
    }
    if (stride == sizeof(T)) return NQ_OK;
    if (n > SIZE_MAX / sizeof(T)) return fail(NQ_ERR_INVALID_ARGUMENT, "%zu %s: too many", n, arg);
    out.owned = static_cast<T *>(out.mem.alloc(n * sizeof(T), alignof(T)));
    if (!out.owned) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating %zu bytes for %s failed", n * sizeof(T), arg);
    for (size_t i = 0; i < n; ++i) {
        init(&out.owned[i]);
        nq_status st = copy_sized(reinterpret_cast<const T *>(base + i * stride), &out.owned[i], type);
        if (st != NQ_OK) {
            char msg[512];
            std::snprintf(msg, sizeof msg, "%s", nq_last_error());
            return fail(st, "%s[%zu]: %s", arg, i, msg);
        }
    }
    out.data = out.owned;
    return NQ_OK;
}

}  // namespace

nq_status compress_chunk(nq_context *ctx, const nq_kv_desc *kv, const nq_score_desc *sc, void *stream,
                         bool first_chunk, nq_block **out) {
    if (!kv) return fail(NQ_ERR_INVALID_ARGUMENT, "kv is NULL");
    size_t sz;
    std::memcpy(&sz, kv, sizeof sz);
    NQ_TRY(check_struct_size("nq_kv_desc", sz, sizeof(nq_kv_desc), false));
    if (const BackendOps *be = batch_backend(kv))
        return device_batch(ctx, *be, kv, sc, 1, nullptr, nullptr, 0, stream, first_chunk, out, nullptr);
    Workspace ws;
    ws.cap = item_workspace(ctx, kv->num_tokens);
    ws.base = static_cast<uint8_t *>(ctx->mem.alloc(ws.cap, 64));
    if (!ws.base) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating %zu bytes of scratch failed", ws.cap);
    ScratchGuard g{ctx->mem, ws.base};
    return compress_one(ctx, kv, sc, nullptr, ws, stream, first_chunk, out);
}

}  // namespace nq

using namespace nq;

extern "C" NQ_API nq_status nq_compress_bound(const nq_context *ctx, const nq_kv_desc *kv_in, size_t *bytes) {
    clear_error();
    DefaultFpEnv fp_env;  // results independent of the caller's MXCSR
    if (!ctx) return fail(NQ_ERR_INVALID_ARGUMENT, "ctx is NULL");
    if (!kv_in) return fail(NQ_ERR_INVALID_ARGUMENT, "kv is NULL");
    if (!bytes) return fail(NQ_ERR_INVALID_ARGUMENT, "bytes is NULL");
    nq_kv_desc kv;
    nq_kv_desc_init(&kv);
    NQ_TRY(copy_sized(kv_in, &kv, "nq_kv_desc"));
    NQ_TRY(validate_kv(ctx, kv, false, "kv"));
    Workspace ws;
    ws.cap = (size_t)kv.num_tokens * 8 + 64;
    ws.base = static_cast<uint8_t *>(ctx->mem.alloc(ws.cap, 64));
    if (!ws.base) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating %zu bytes of scratch failed", ws.cap);
    ScratchGuard g{ctx->mem, ws.base};
    Plan p = make_plan(ctx, kv, fill_positions(kv, ws));
    plan_bound_bits(ctx, p);
    *bytes = p.g.total;
    return NQ_OK;
}

extern "C" NQ_API nq_status nq_workspace_size(const nq_context *ctx, const nq_kv_desc *items, size_t n,
                                              size_t *bytes) {
    clear_error();
    if (!ctx) return fail(NQ_ERR_INVALID_ARGUMENT, "ctx is NULL");
    if (!bytes) return fail(NQ_ERR_INVALID_ARGUMENT, "bytes is NULL");
    if (n && !items) return fail(NQ_ERR_INVALID_ARGUMENT, "items is NULL");
    SizedArray<nq_kv_desc> item_array(ctx->mem);
    NQ_TRY(load_sized_array(items, n, offsetof(nq_kv_desc, k), nq_kv_desc_init, "items", "nq_kv_desc", item_array));
    items = item_array.data;
    if (const BackendOps *be = n ? batch_backend(items) : nullptr) {
        *bytes = be->workspace_bound(ctx, items, n);
        return NQ_OK;
    }
    size_t mx = 0;
    for (size_t i = 0; i < n; ++i) mx = std::max(mx, item_workspace(ctx, items[i].num_tokens));
    // A caller's workspace needs only byte alignment: its start is rounded up to the
    // 64 bytes the scratch is laid out in, which may take up to 63 of its bytes.
    *bytes = mx + kWorkspaceAlign - 1;
    return NQ_OK;
}

extern "C" NQ_API nq_status nq_compress_kv(nq_context *ctx, const nq_kv_desc *kv, const nq_score_desc *scores,
                                           void *stream, nq_block **out) {
    clear_error();
    DefaultFpEnv fp_env;  // results independent of the caller's MXCSR
    if (!out) return fail(NQ_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = nullptr;
    if (!ctx) return fail(NQ_ERR_INVALID_ARGUMENT, "ctx is NULL");
    return compress_chunk(ctx, kv, scores, stream, true, out);
}

namespace nq {
namespace {

// The batch; `*per_item` tells whether item_status has been written for every item.
nq_status compress_batch(nq_context *ctx, const nq_kv_desc *items, const nq_score_desc *scores, size_t n,
                         const nq_buffer *dst, void *workspace, size_t workspace_bytes, void *stream, nq_block **out,
                         nq_status *item_status, bool *per_item) {
    if (!ctx) return fail(NQ_ERR_INVALID_ARGUMENT, "ctx is NULL");
    if (!out) return fail(NQ_ERR_INVALID_ARGUMENT, "out is NULL");
    if (n && !items) return fail(NQ_ERR_INVALID_ARGUMENT, "items is NULL");
    for (size_t i = 0; i < n; ++i) out[i] = nullptr;
    if (!workspace && workspace_bytes)
        return fail(NQ_ERR_INVALID_ARGUMENT, "workspace is NULL but workspace_bytes is %zu", workspace_bytes);
    SizedArray<nq_kv_desc> item_array(ctx->mem);
    NQ_TRY(load_sized_array(items, n, offsetof(nq_kv_desc, k), nq_kv_desc_init, "items", "nq_kv_desc", item_array));
    items = item_array.data;
    SizedArray<nq_score_desc> score_array(ctx->mem);
    NQ_TRY(load_sized_array(scores, n, sizeof(size_t), nq_score_desc_init, "scores", "nq_score_desc", score_array));
    scores = score_array.data;
    if (const BackendOps *be = n ? batch_backend(items) : nullptr) {
        *per_item = true;
        return device_batch(ctx, *be, items, scores, n, dst, workspace, workspace_bytes, stream, true, out, item_status);
    }
    Workspace ws;
    void *owned = nullptr;
    if (workspace) {
        const size_t skip = (size_t)(-(uintptr_t)workspace & (kWorkspaceAlign - 1));
        ws.base = static_cast<uint8_t *>(workspace) + skip;
        ws.cap = workspace_bytes > skip ? workspace_bytes - skip : 0;
    } else {
        size_t need = 0;
        for (size_t i = 0; i < n; ++i) need = std::max(need, item_workspace(ctx, items[i].num_tokens));
        owned = ctx->mem.alloc(need ? need : 64, 64);
        if (!owned) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating %zu bytes of scratch failed", need);
        ws.base = static_cast<uint8_t *>(owned);
        ws.cap = need;
    }
    ScratchGuard g{ctx->mem, owned};
    nq_status first = NQ_OK;
    char first_msg[512] = "";
    *per_item = true;
    for (size_t i = 0; i < n; ++i) {
        ws.used = 0;
        nq_status st = compress_one(ctx, &items[i], scores ? &scores[i] : nullptr, dst ? &dst[i] : nullptr, ws, stream,
                                    true, &out[i]);
        if (item_status) item_status[i] = st;
        if (st != NQ_OK && first == NQ_OK) {
            first = st;
            std::snprintf(first_msg, sizeof first_msg, "item %zu: %s", i, nq_last_error());
        }
    }
    if (first != NQ_OK) return fail(first, "%s", first_msg);
    clear_error();
    return NQ_OK;
}

}  // namespace
}  // namespace nq

extern "C" NQ_API nq_status nq_compress_batch(nq_context *ctx, const nq_kv_desc *items, const nq_score_desc *scores,
                                              size_t n, const nq_buffer *dst, void *workspace, size_t workspace_bytes,
                                              void *stream, nq_block **out, nq_status *item_status) {
    clear_error();
    DefaultFpEnv fp_env;  // results independent of the caller's MXCSR
    bool per_item = false;
    const nq_status st = compress_batch(ctx, items, scores, n, dst, workspace, workspace_bytes, stream, out,
                                        item_status, &per_item);
    // A call that fails before reaching the items fails every item the same way.
    if (!per_item && item_status)
        for (size_t i = 0; i < n; ++i) item_status[i] = st;
    return st;
}

extern "C" NQ_API nq_status nq_estimate_bytes(const nq_context *ctx, uint32_t layers, uint64_t tokens,
                                              uint64_t *bytes) {
    clear_error();
    DefaultFpEnv fp_env;  // results independent of the caller's MXCSR
    if (!ctx) return fail(NQ_ERR_INVALID_ARGUMENT, "ctx is NULL");
    if (!bytes) return fail(NQ_ERR_INVALID_ARGUMENT, "bytes is NULL");
    if (tokens == 0 || tokens > 0xffffffffull)
        return fail(NQ_ERR_INVALID_ARGUMENT, "tokens is %llu: must be in 1..2^32-1", (unsigned long long)tokens);
    uint64_t total = 0;
    for (uint32_t l = 0; l < layers; ++l) {
        nq_kv_desc kv;
        nq_kv_desc_init(&kv);
        kv.layer = l;
        kv.num_tokens = (uint32_t)tokens;
        nq_layout_contiguous(&kv.k_layout, kv.num_tokens, ctx->cfg.head_dim);
        kv.v_layout = kv.k_layout;
        Plan p = make_plan(ctx, kv, Iota());
        plan_bound_bits(ctx, p);
        total += p.g.total;
    }
    *bytes = total;
    return NQ_OK;
}
