// Attention over an uncompressed fp16 cache: the baseline of `nq bench --attention`.
#pragma once
#include <cstdint>

#include "../../backends/cpu/isa/attention_kernels.h"

namespace nqcli {

// The kernels of a context's ISA (nq_context_cpu_isa()); NULL for "scalar".
const nq::AttnKernels *attention_kernels_for(const char *isa);

// Decode-step attention over K and V [seqs][kv_heads][tokens][head_dim] fp16, queries
// and out fp32 [seqs][kv_heads * group][head_dim], lse [seqs][q_heads]; logits times
// scale, no mask; `threads` threads over (sequence, KV head).
void fp16_attention(const nq::AttnKernels *ak, uint32_t threads, const uint16_t *k, const uint16_t *v, uint32_t seqs,
                    uint32_t kv_heads, uint32_t group, uint32_t tokens, uint32_t head_dim, const float *q, float scale,
                    float *out, float *lse);

}  // namespace nqcli
