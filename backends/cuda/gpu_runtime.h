// The one place that picks the GPU runtime the backend sources compile against:
//   CUDA (nvcc), HIP (hipcc, through backends/hip/hip_compat.h), or the CPU stand-in
//   of backends/cuda/sim/ (NQ_GPU_SIM) that runs the same kernels on host threads so
//   their indexing and lane exchanges are tested where no GPU exists.
// Kernel sources use CUDA names only; launches go through NQ_LAUNCH so the stand-in
// can run them.
#pragma once

#if defined(NQ_GPU_SIM)
#include "sim/cuda_sim.h"
#define NQ_LAUNCH(kernel, grid, block, stream, ...) \
    ::nq_sim::launch((grid), (block), [&]() { kernel(__VA_ARGS__); })
#elif defined(__HIPCC__) || defined(NQ_HIP)
#include "../hip/hip_compat.h"
#define NQ_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#else
#include <cuda_runtime.h>
#define NQ_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

#include <cstdint>

namespace nq {
namespace gpu {

// Bytes of data one launch can carry in its parameters (the upload kernel's payload).
// CUDA 12.1+ accepts 32764 bytes of parameters on sm_70 and later; HIP keeps to 4 KiB.
#if defined(__HIPCC__) || defined(NQ_HIP)
constexpr uint32_t kParamPayload = 3 * 1024;
#else
constexpr uint32_t kParamPayload = 30 * 1024;
#endif

// Lanes of a group never straddle 32 lanes, so group masks fit 32 bits on every target
// (AMD's 64-lane waves included: HIP's exchanges ignore the mask).
__device__ __forceinline__ unsigned group_mask(unsigned lane32, unsigned G) {
    return G >= 32 ? 0xffffffffu : (((1u << G) - 1u) << (lane32 & ~(G - 1u)));
}

}  // namespace gpu
}  // namespace nq

#include "gpu_backend.h"
