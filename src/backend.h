// The internal interface every backend implements, and the scratch allocator the
// API hands it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "api/internal.h"

namespace nq {

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

struct Backend {
    const char *name;
    // Importance of every (head, token) into out[h * num_tokens + t]; higher = keep.
    nq_status (*scores)(const nq_context *ctx, const nq_kv_desc &kv, const nq_score_desc *sc,
                        const int64_t *positions, float *out, Workspace &ws);
    nq_status (*encode)(const nq_context *ctx, const EncodeJob &job, void *stream);
    nq_status (*decode)(const nq_context *ctx, const nq_block &blk, uint32_t begin, uint32_t end,
                        const nq_kv_desc &out, void *stream);
};

const Backend &cpu_backend();

// Scratch bytes the scores of one item need beyond the [heads][tokens] output.
size_t score_scratch_bytes(uint32_t num_tokens);

// Keeps sinks, the recent window and the top tokens by score (evict.cpp). Writes
// kept[rows][*num_kept] (input indices, increasing) and returns rows in *rows.
nq_status select_tokens(const nq_context *ctx, const nq_kv_desc &kv, const LayerParams &lp, const float *scores,
                        const int64_t *positions, uint32_t *kept, uint32_t *num_kept, uint32_t *rows, Workspace &ws);

// Tokens kept per head for T input tokens (what select_tokens will keep, upper bound
// for the paged mode).
uint32_t planned_kept(const nq_context *ctx, const nq_kv_desc &kv, const LayerParams &lp, const int64_t *positions);

}  // namespace nq
