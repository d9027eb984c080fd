// The internal interface every backend implements, and the scratch allocator the
// API hands it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "api/internal.h"

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
// for the paged mode). sinks: the leading tokens whose positions are below
// lp.sink_tokens.
uint32_t planned_kept(const nq_context *ctx, const nq_kv_desc &kv, const LayerParams &lp, uint32_t sinks);

// Max-pool width over query scores when nq_score_desc.pool_kernel is 0. 15, not the 7
// of earlier releases: on SmolLM2-135M the wider window keeps whole facts (the digits of
// a planted code and their neighbours) and retrieved the needle at every depth where 7
// lost it, at equal or lower perplexity (BENCHMARKS.md, "Tuning").
constexpr uint32_t kDefaultPoolKernel = 15;


#if defined(NQ_HAVE_GPU)
// The GPU backend (backends/cuda/; HIP builds compile the same sources). Built when
// NQ_CUDA or NQ_HIP is on; absent otherwise.
#if defined(NQ_HAVE_HIP)
constexpr nq_memory kGpuMemory = NQ_MEMORY_HIP;
constexpr const char *kGpuName = "HIP";
#else
constexpr nq_memory kGpuMemory = NQ_MEMORY_CUDA;
constexpr const char *kGpuName = "CUDA";
#endif

// One block of a GPU compress batch. job.kept holds tokens selected on the host (NULL
// when nothing is evicted or the device selects: sel_rows != 0).
struct GpuItem {
    EncodeJob job;
    nq_score_desc scores;     // device selection: GIVEN (device memory) or KEY_NORM
    uint32_t sel_rows;        // 0, 1 (head-shared) or num_heads (per head)
    uint32_t sel_lo, sel_hi;  // sinks [0, lo) and window [hi, T) are kept...
    uint32_t sel_m;           // ...and sel_m tokens of [lo, hi) by score
};

// NQ_OK when the runtime has device `device`; NQ_ERR_BACKEND_UNAVAILABLE otherwise.
nq_status gpu_device_check(int32_t device);
// Device workspace a compress batch of these items needs (an upper bound).
size_t gpu_workspace_bound(const nq_context *ctx, const nq_kv_desc *items, size_t n);
nq_status gpu_compress(nq_context *ctx, const GpuItem *items, size_t n, void *workspace, size_t workspace_bytes,
                       void *stream);
nq_status gpu_decode(nq_context *ctx, const nq_block &b, uint32_t begin, uint32_t end, const nq_kv_desc &out,
                     void *stream);
// The default allocator's device memory.
void *gpu_alloc(size_t bytes, int32_t device);
void gpu_free(void *p, int32_t device);
// Copies bytes between host and device memory (either direction) on `stream`.
nq_status gpu_copy(void *dst, nq_memory dst_memory, const void *src, nq_memory src_memory, size_t bytes,
                   int32_t device, void *stream);
// Frees what the backend keeps for a context (RoPE tables).
void gpu_context_release(nq_context *ctx);
#endif

}  // namespace nq
