// Attention over resident blocks (nq_attention_decode): the resolved call every
// backend receives. src/api validates the public descriptor and fills this once;
// backends read only this.
#pragma once
#include <cstddef>
#include <cstdint>

#include "nexusquant.h"

struct nq_context;

namespace nq {

struct AttentionCall {
    nq_memory memory;
    int32_t device;
    uint32_t num_seqs, q_tokens;
    nq_dtype dtype;
    uint32_t head_dim, num_kv_heads, num_q_heads, group;  // group = num_q_heads / num_kv_heads
    const void *const *block_images;
    const uint32_t *block_indptr;
    const void *q;
    int64_t q_stride_seq, q_stride_token, q_stride_head;        // elements, resolved (never 0 unless dim 1)
    void *out;
    int64_t out_stride_seq, out_stride_token, out_stride_head;  // elements, resolved
    float *lse;                                                 // may be NULL
    const int64_t *q_positions;                                 // may be NULL
    float scale;                                                // resolved (> 0)
    float softcap;                                              // 0 = none
    uint32_t window;                                            // 0 = none
    uint32_t num_splits;                                        // >= 1, resolved
};

// CPU backend (backends/cpu): host memory. Scratch comes from `workspace`, which holds
// at least cpu_attention_workspace_bytes(call) bytes.
size_t cpu_attention_workspace_bytes(const nq_context *ctx, const AttentionCall &call);
nq_status cpu_attention(const nq_context *ctx, const AttentionCall &call, void *workspace);

}  // namespace nq
