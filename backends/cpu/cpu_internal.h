// Pieces of the CPU backend shared by the reference loops (cpu_codec.cpp) and the
// tiled SIMD driver (cpu_tiles.cpp).
#pragma once
#include <cstdint>

#include "../../src/backend.h"
#include "isa/kernels.h"

namespace nq {

struct ThreadPool;  // thread_pool.h

// The CPU backend's per-context state (BackendOps::state_create): the instruction set
// chosen once (after the config's and the environment's caps) and the thread pool of
// num_threads - 1 workers (NULL when num_threads <= 1).
struct CpuState {
    nq_cpu_isa isa;
    ThreadPool *pool;
};
inline const CpuState &cpu_state(const nq_context *ctx) {
    return *static_cast<const CpuState *>(backend_state(ctx, NQ_MEMORY_HOST));
}
inline nq_cpu_isa cpu_isa(const nq_context *ctx) { return cpu_state(ctx).isa; }
inline ThreadPool *cpu_pool(const nq_context *ctx) { return cpu_state(ctx).pool; }

// Inverse frequencies and mscale of a block's RoPE (rope_inv_freq of its header).
void block_rope_freqs(const BlockHeader &h, double *inv_freq, double *mscale);

// Original position of kept token j of a head.
int64_t block_position(const nq_block &b, uint32_t head, uint32_t j);

// The positions section of a block being encoded.
void write_positions(const EncodeJob &job);

// The reference loops over kept tokens [j_begin, j_end) of every head: raw rows and
// coded rows of an encode, or the rows of a decode of [begin, end).
nq_status encode_rows_reference(const EncodeJob &job, uint32_t j_begin, uint32_t j_end);
void decode_rows_reference(const nq_block &b, uint32_t begin, const nq_kv_desc &out, uint32_t j_begin,
                           uint32_t j_end);

// The messages of a non-finite input row (kept as fp16, or quantised).
nq_status raw_row_error(const char *which, uint32_t head, uint32_t token);
nq_status coded_row_error(const char *which, uint32_t head, uint32_t token);

// The same with the SIMD kernels, spread over the context's thread pool.
nq_status encode_tiled(const nq_context *ctx, const CpuKernels &kn, const EncodeJob &job);
nq_status decode_tiled(const nq_context *ctx, const CpuKernels &kn, const nq_block &b, uint32_t begin,
                       uint32_t end, const nq_kv_desc &out);

// The backend's entry points (the table in cpu_backend.cpp): importance of every
// (head, token) into out[h * num_tokens + t] (higher = keep), encode of a planned
// block, decode of [begin, end) of a resident block.
nq_status cpu_scores_guarded(const nq_context *ctx, const nq_kv_desc &kv, const nq_score_desc *sc,
                             const int64_t *positions, float *out, Workspace &ws);
nq_status cpu_encode(const nq_context *ctx, const EncodeJob &job, void *stream);
nq_status cpu_decode(const nq_context *ctx, const nq_block &b, uint32_t begin, uint32_t end, const nq_kv_desc &out,
                     void *stream);

// How `units` x `heads` work items are cut into tasks for `threads` threads.
struct TaskSplit {
    uint32_t units_per_task;
    uint32_t heads_per_task;
    uint32_t head_groups;
    uint32_t tasks;
};
TaskSplit split_tasks(uint32_t units, uint32_t heads, uint32_t threads);

}  // namespace nq
