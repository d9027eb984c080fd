// What the host side of the GPU backend hands the kernel files, and the launch shapes.
#pragma once
#include <atomic>
#include <cstdint>

#include "gpu_desc.h"
#include "gpu_runtime.h"

namespace nq {
namespace gpu {

constexpr unsigned kThreads = 128;  // threads per block of the row kernels

// Lanes per head vector: P / 8 for P = next power of two >= head_dim up to 256; 64
// stands for 32 lanes of 16 floats (head_dim > 256).
inline uint32_t lanes_for(uint32_t head_dim) {
    uint32_t p = 8;
    while (p < head_dim) p <<= 1;
    return p <= 256 ? p / 8 : 64;
}

// Blocks for `threads` threads of work: no more than fill the device once (the kernels
// loop over their rows), at least 1.
// The device is asked once per kernel and device, so launches made while a stream is
// being captured into a graph call nothing but the launch itself.
template <class Kernel> unsigned grid_for(int device, Kernel kern, uint64_t threads) {
    static std::atomic<int> resident[16];
    int blocks = device >= 0 && device < 16 ? resident[device].load(std::memory_order_relaxed) : 0;
    if (blocks <= 0) {
        int sms = 1, per_sm = 1;
        (void)cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
        (void)cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, (int)kThreads, 0);
#if defined(NQ_BLOCKS_PER_SM)  // experiments: fewer resident blocks than registers allow
        if (per_sm > NQ_BLOCKS_PER_SM) per_sm = NQ_BLOCKS_PER_SM;
#endif
        blocks = (sms < 1 ? 1 : sms) * (per_sm < 1 ? 1 : per_sm);
        if (device >= 0 && device < 16) resident[device].store(blocks, std::memory_order_relaxed);
    }
    uint64_t need = (threads + kThreads - 1) / kThreads;
    uint64_t cap = (uint64_t)blocks;
    if (need > cap) need = cap;
    return need ? (unsigned)need : 1u;
}

struct EncodeLaunch {
    int device;
    uint32_t head_dim;
    const EncodeItem *items;  // device
    uint32_t n_items;
    uint64_t total_rows, total_pos;
    uint64_t work_groups;  // lane groups that have work (rows, or meta/position threads / G)
    uint32_t mean_heads;   // (item, head) pairs of key-centred items: key_mean_finish_kernel's work
    uint32_t mean_runs;    // (item, head, run) triples: key_mean_runs_kernel's work
};
cudaError_t run_encode(const EncodeLaunch &a, cudaStream_t stream);

// A decode launch carries the destination page-table entries it needs in its
// parameters (the caller's page tables are host memory; decode takes no workspace).
struct DecodeLaunchArgs {
    DecodeParams p;
    uint32_t k_page_base, v_page_base;
};
constexpr uint32_t kDecodePages =
    (uint32_t)((kParamPayload - sizeof(DecodeLaunchArgs)) / (2 * sizeof(int32_t)));
struct DecodeLaunch {
    DecodeLaunchArgs a;
    int32_t kpages[kDecodePages];
    int32_t vpages[kDecodePages];
};
cudaError_t run_decode(int device, const DecodeLaunch &l, cudaStream_t stream);

// Copies n bytes of host data into device memory through kernel parameters: ordered on
// the stream, no staging buffer, no synchronisation, and captured by value in graphs.
cudaError_t upload(void *dst_device, const void *src_host, size_t n, cudaStream_t stream);

// Device-side token selection (select.cu).
struct SelectLaunch {
    int device;
    const SelectItem *items;  // device
    uint32_t n_items;
    uint32_t total_rows;      // selection rows over all items
    uint64_t norm_rows;       // (item, head, token) key-norm scores to compute
    uint32_t max_heads;
};
cudaError_t run_select(const SelectLaunch &a, const SelectItem *host_items, cudaStream_t stream);

// Query scores of one item: the number of keys each query sees travels in the launch.
constexpr uint32_t kMaxQueries = (uint32_t)((kParamPayload - sizeof(QueryParams)) / sizeof(uint32_t));
struct QueryLaunch {
    QueryParams p;
    uint32_t visible[kMaxQueries];
};
cudaError_t run_queries(int device, const QueryLaunch &l, cudaStream_t stream);

}  // namespace gpu
}  // namespace nq
