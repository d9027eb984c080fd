// The GPU backend's entry points (CUDA, or HIP from the same sources): what its entry in
// the backend table (registry.cu) points to, and what the GPU tests and benchmarks call
// directly. Included by gpu_runtime.h, so every GPU source sees it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "nexusquant.h"

namespace nq {

struct AttentionCall;  // src/attention/attention.h
struct BatchItem;      // src/backend.h

#if defined(__HIPCC__) || defined(NQ_HIP) || defined(NQ_HAVE_HIP)
constexpr nq_memory kGpuMemory = NQ_MEMORY_HIP;
constexpr const char *kGpuName = "HIP";
#else
constexpr nq_memory kGpuMemory = NQ_MEMORY_CUDA;
constexpr const char *kGpuName = "CUDA";
#endif

// NQ_OK when the runtime has device `device`; NQ_ERR_BACKEND_UNAVAILABLE otherwise.
nq_status gpu_device_check(int32_t device);
// Device workspace a compress batch of these items needs (an upper bound).
size_t gpu_workspace_bound(const nq_context *ctx, const nq_kv_desc *items, size_t n);
nq_status gpu_compress(nq_context *ctx, const BatchItem *items, size_t n, void *workspace, size_t workspace_bytes,
                       void *stream);
nq_status gpu_decode(nq_context *ctx, const nq_block &b, uint32_t begin, uint32_t end, const nq_kv_desc &out,
                     void *stream);
// The default allocator's device memory.
void *gpu_alloc(size_t bytes, int32_t device);
void gpu_free(void *p, int32_t device);
// Copies bytes between host and device memory (either direction) on `stream`.
nq_status gpu_copy(void *dst, nq_memory dst_memory, const void *src, nq_memory src_memory, size_t bytes,
                   int32_t device, void *stream);
// Frees what the backend keeps for a context (RoPE tables): its backend_state slot.
void gpu_context_release(nq_context *ctx, void *state);

// Attention: one launch on `stream` (plus a memset of the split counters when
// num_splits > 1). num_splits is 1..kMaxAttentionSplits.
constexpr uint32_t kMaxAttentionSplits = 128;
size_t gpu_attention_workspace_bytes(const nq_context *ctx, const AttentionCall &call);
nq_status gpu_attention(nq_context *ctx, const AttentionCall &call, void *workspace, void *stream);
// Splits per (sequence, KV head) that fill the current device: about four CTAs per
// multiprocessor over num_seqs x kv_heads, at least 1. A function of its arguments and
// the device only, so a captured graph keeps its grid.
uint32_t gpu_attention_splits(const nq_context *ctx, uint32_t num_seqs, uint32_t kv_heads);

}  // namespace nq
