// The GPU backend's entry in the backend table (src/backend.h). Compiled only when the
// build has a GPU backend (CUDA, or HIP through backends/hip/hip_compat.h);
// src/backend_registry.cpp adds it.
#include "gpu_runtime.h"  // first: the runtime defines __host__/__device__ for the shared headers

#include "../../src/attention/attention.h"
#include "../../src/backend.h"

namespace nq {

namespace {

void *alloc_entry(size_t bytes, size_t, int32_t device) { return gpu_alloc(bytes, device); }

// A GPU wants a few hundred resident work items over (sequence, KV head) pairs; the
// kernel caps what it uses. Never more than 16.
uint32_t default_splits(const nq_context *, uint32_t num_seqs, uint32_t kv_heads) {
    const uint64_t items = (uint64_t)num_seqs * kv_heads;
    uint64_t s = items ? (264 + items - 1) / items : 1;
    return (uint32_t)(s < 1 ? 1 : (s > 16 ? 16 : s));
}

}  // namespace

const BackendOps *gpu_backend_ops() {
    static const BackendOps ops = [] {
        BackendOps o{};
        o.name = kGpuName;
        o.memory = kGpuMemory;
        o.kind = kGpuMemory == NQ_MEMORY_HIP ? NQ_BACKEND_HIP : NQ_BACKEND_CUDA;
        o.state_create = nullptr;  // RoPE tables: created on first use (backend.cu)
        o.state_release = gpu_context_release;
        o.device_check = gpu_device_check;
        o.alloc = alloc_entry;
        o.free = gpu_free;
        o.copy = gpu_copy;
        o.workspace_bound = gpu_workspace_bound;
        o.compress = gpu_compress;
        o.decode = gpu_decode;
        o.attention_workspace = gpu_attention_workspace_bytes;
        o.attention = gpu_attention;
        o.attention_splits = default_splits;
        o.workspace_align = 256;
        o.variant = nullptr;
        return o;
    }();
    return &ops;
}

}  // namespace nq
