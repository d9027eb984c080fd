// The internal interface every backend implements, and the scratch allocator the
// API hands it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "context.h"

namespace nq {

// Alignment of the scratch laid out in a workspace (cache lines, SIMD loads).
constexpr size_t kWorkspaceAlign = 64;

// Bump allocator over a workspace (the caller's, or one the context allocated).
struct Workspace {
    uint8_t *base = nullptr;
    size_t cap = 0, used = 0;
    template <class T> T *take(size_t n) {
        size_t off = align_up(used, 64);
        if (off + n * sizeof(T) > cap) return nullptr;
        used = off + n * sizeof(T);
        return reinterpret_cast<T *>(base + off);
    }
};

struct EncodeJob {
    const nq_kv_desc *kv;
    const BlockHeader *h;
    const BlockGeometry *g;
    const int64_t *positions;  // [num_tokens] original position of every input token
    const uint32_t *kept;      // [kept_rows][tokens_kept] input indices; NULL = every token
    uint32_t kept_rows;        // 1 (shared) or num_heads (per head)
    uint8_t *dst;              // the block image (g->total bytes), header already written
};

// Scratch bytes the scores of one item need beyond the [heads][tokens] output.
size_t score_scratch_bytes(uint32_t num_tokens);

// Max-pool width over query scores when nq_score_desc.pool_kernel is 0. 15, not the 7
// of earlier releases: on SmolLM2-135M the wider window keeps whole facts (the digits of
// a planted code and their neighbours) and retrieved the needle at every depth where 7
// lost it, at equal or lower perplexity (BENCHMARKS.md, "Tuning").
constexpr uint32_t kDefaultPoolKernel = 15;

// One block of a device compress batch (BackendOps::compress). job.kept holds tokens
// selected on the host (NULL when nothing is evicted or the device selects: sel_rows != 0).
struct BatchItem {
    EncodeJob job;
    nq_score_desc scores;     // device selection: GIVEN (device memory) or KEY_NORM
    uint32_t sel_rows;        // 0, 1 (head-shared) or num_heads (per head)
    uint32_t sel_lo, sel_hi;  // sinks [0, lo) and window [hi, T) are kept...
    uint32_t sel_m;           // ...and sel_m tokens of [lo, hi) by score
};

struct AttentionCall;  // src/attention/attention.h

// The backend table: one entry per memory kind a build serves. The API layer validates,
// plans and then calls through the entry of the memory its data lives in; a memory kind
// without an entry is NQ_ERR_BACKEND_UNAVAILABLE. A NULL member is an operation the
// backend does not have.
struct BackendOps {
    const char *name;   // "CPU", "CUDA", "HIP"
    nq_memory memory;   // the memory kind it serves
    nq_backend kind;    // the nq_config.backend that names it
    // Per-context state, created with the context (NULL create: none, or created on
    // first use by the backend itself) and released with it.
    nq_status (*state_create)(nq_context *ctx, void **state);
    void (*state_release)(nq_context *ctx, void *state);
    // Device memory: whether `device` exists (NULL: always), the default allocator's
    // memory, and copies between host and device memory (either direction) on a stream.
    nq_status (*device_check)(int32_t device);
    void *(*alloc)(size_t bytes, size_t align, int32_t device);
    void (*free)(void *p, int32_t device);
    nq_status (*copy)(void *dst, nq_memory dst_memory, const void *src, nq_memory src_memory, size_t bytes,
                      int32_t device, void *stream);
    // Compression, host style: scores of one item, then encode of its planned block.
    nq_status (*scores)(const nq_context *ctx, const nq_kv_desc &kv, const nq_score_desc *sc,
                        const int64_t *positions, float *out, Workspace &ws);
    nq_status (*encode)(const nq_context *ctx, const EncodeJob &job, void *stream);
    // Compression, device style: a whole planned batch in one submission on `stream`
    // (selection on the device where an item asks for it). workspace_bound is the
    // device workspace such a batch needs (an upper bound).
    size_t (*workspace_bound)(const nq_context *ctx, const nq_kv_desc *items, size_t n);
    nq_status (*compress)(nq_context *ctx, const BatchItem *items, size_t n, void *workspace,
                          size_t workspace_bytes, void *stream);
    nq_status (*decode)(nq_context *ctx, const nq_block &blk, uint32_t begin, uint32_t end, const nq_kv_desc &out,
                        void *stream);
    // Attention over resident blocks (nq_attention_decode): scratch bytes of a call, the
    // call, and the splits per (sequence, KV head) it takes when the caller leaves
    // nq_attention_desc.num_splits at 0.
    size_t (*attention_workspace)(const nq_context *ctx, const AttentionCall &call);
    nq_status (*attention)(nq_context *ctx, const AttentionCall &call, void *workspace, void *stream);
    uint32_t (*attention_splits)(const nq_context *ctx, uint32_t num_seqs, uint32_t kv_heads);
    // Alignment the API gives the workspaces it allocates for this backend.
    size_t workspace_align;
    // Name of the kernel variant a context runs (the CPU's instruction set).
    const char *(*variant)(const nq_context *ctx);
};

// The table entry of a memory kind; NULL when this library has no backend for it
// (src/backend_registry.cpp).
const BackendOps *backend_for(nq_memory memory);
// The entry for a memory kind (HOST, CUDA, HIP) or `kind` of nq_config.backend.
const BackendOps *backend_for_kind(nq_backend kind);
// Whether any device (non-host) backend is registered.
bool have_device_backend();
// Every registered entry (the CPU first), `*n` of them.
const BackendOps *const *backends_registered(size_t *n);

// The per-context state of the backend serving `memory` (kMemoryKinds slots).
inline void *&backend_state(nq_context *ctx, nq_memory memory) { return ctx->backend_state[(int)memory]; }
inline void *backend_state(const nq_context *ctx, nq_memory memory) { return ctx->backend_state[(int)memory]; }

}  // namespace nq
