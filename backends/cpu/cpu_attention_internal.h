// Pieces of CPU attention shared beyond cpu_attention.cpp: the kernels of an
// instruction set, and attention over an uncompressed fp16 cache (the baseline the
// benchmark compares with, built from the same kernels).
#pragma once
#include <cstdint>

#include "isa/attention_kernels.h"
#include "nexusquant.h"

struct nq_context;

namespace nq {

// NULL for NQ_ISA_SCALAR and for ISAs this build or CPU lacks.
const AttnKernels *attn_kernels(nq_cpu_isa isa);

// Decode-step attention over an fp16 cache [seqs][kv_heads][tokens][head_dim] (K and V
// alike), queries and out fp32 [seqs][q_heads][head_dim], lse [seqs][q_heads]; scale
// applied to the logits, no mask. Threads over (sequence, KV head) on the context's pool.
nq_status cpu_attention_f16_cache(const nq_context *ctx, const uint16_t *k, const uint16_t *v, uint32_t seqs,
                                  uint32_t tokens, const float *q, float scale, float *out, float *lse);

}  // namespace nq
