// Token selection on the device, the same choice as the host's select_tokens: for each
// row (a KV head, or all heads summed), keep the m best candidates of [lo, hi) by score,
// higher first, ties to the earlier token, NaN last (-0 equals +0), listed in token
// order after the sinks and before the recent window.
#include "launch.h"
#include "kernels.cuh"

namespace nq {
namespace gpu {

namespace {

constexpr unsigned kSelThreads = 256;

__device__ __forceinline__ float given_score(const SelectItem &it, uint32_t h, uint32_t t) {
    return it.scores[(int64_t)h * it.stride_head + (int64_t)t * it.stride_token];
}

// Key-norm scores: -(k . k) summed in dimension order (cpu_scores).
__global__ void __launch_bounds__(kSelThreads) norm_kernel(const SelectItem *items, uint32_t n_items, uint64_t total) {
    for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t rem = e;
        uint32_t i = 0;
        while (i < n_items && rem >= (items[i].scores ? 0ull : (uint64_t)items[i].H * items[i].T)) {
            rem -= items[i].scores ? 0ull : (uint64_t)items[i].H * items[i].T;
            ++i;
        }
        if (i >= n_items) return;
        const SelectItem &it = items[i];
        const uint32_t h = (uint32_t)(rem / it.T), t = (uint32_t)(rem % it.T);
        const int64_t off = layout_offset(it.kl, h, t), sd = it.kl.stride_dim;
        float s = 0.0f;
        for (uint32_t d = 0; d < it.D; ++d) {
            float x;
            if (it.dtype == kF32)
                x = static_cast<const float *>(it.k)[off + (int64_t)d * sd];
            else
                x = half_to_float(static_cast<const uint16_t *>(it.k)[off + (int64_t)d * sd], it.dtype);
            s += x * x;
        }
        it.norm[(uint64_t)h * it.T + t] = -s;
    }
}

// Head-shared rows: scores summed over heads in head order, into norm row H.
__global__ void __launch_bounds__(kSelThreads) sum_kernel(const SelectItem *items, uint32_t n_items) {
    const SelectItem &it = items[blockIdx.y];
    if (it.rows != 1) return;
    for (uint32_t t = blockIdx.x * blockDim.x + threadIdx.x; t < it.T; t += gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (uint32_t h = 0; h < it.H; ++h) s += it.scores ? given_score(it, h, t) : it.norm[(uint64_t)h * it.T + t];
        it.norm[(uint64_t)it.H * it.T + t] = s;
    }
    (void)n_items;
}

__device__ __forceinline__ uint32_t score_key(float s) {
    if (s != s) return 0u;  // NaN ranks last
    uint32_t u = __float_as_uint(s);
    if (s == 0.0f) u = 0u;  // -0 == +0
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint32_t row_key(const SelectItem &it, uint32_t r, uint32_t t) {
    if (it.rows == 1) return score_key(it.norm[(uint64_t)it.H * it.T + t]);
    return score_key(it.scores ? given_score(it, r, t) : it.norm[(uint64_t)r * it.T + t]);
}

// Exclusive prefix sum over the block; *total receives the block's sum.
__device__ __forceinline__ uint32_t block_scan(uint32_t v, uint32_t *buf, uint32_t *total) {
    const uint32_t tid = threadIdx.x;
    buf[tid] = v;
    __syncthreads();
    for (uint32_t o = 1; o < kSelThreads; o <<= 1) {
        uint32_t add = tid >= o ? buf[tid - o] : 0u;
        __syncthreads();
        buf[tid] += add;
        __syncthreads();
    }
    const uint32_t incl = buf[tid];
    *total = buf[kSelThreads - 1];
    __syncthreads();
    return incl - v;
}

__global__ void __launch_bounds__(kSelThreads) select_kernel(const SelectItem *items, uint32_t n_items) {
    __shared__ uint32_t hist[256];
    __shared__ uint32_t scan[kSelThreads];
    __shared__ uint32_t sh_prefix, sh_mask, sh_remaining;
    const uint32_t row = blockIdx.x;
    const uint32_t ii = find_item(items, n_items, row, [](const SelectItem &x) { return (uint64_t)x.row_begin; });
    const SelectItem &it = items[ii];
    const uint32_t r = row - it.row_begin;
    const uint32_t tid = threadIdx.x;
    uint32_t *kept = it.kept + (uint64_t)r * it.K;

    // Radix select of the m-th largest key among the candidates, 8 bits at a time.
    if (tid == 0) {
        sh_prefix = 0;
        sh_mask = 0;
        sh_remaining = it.m;
    }
    __syncthreads();
    for (int shift = 24; shift >= 0 && it.m > 0; shift -= 8) {
        for (uint32_t b = tid; b < 256; b += kSelThreads) hist[b] = 0;
        __syncthreads();
        const uint32_t prefix = sh_prefix, pmask = sh_mask;
        for (uint32_t t = it.lo + tid; t < it.hi; t += kSelThreads) {
            const uint32_t k = row_key(it, r, t);
            if ((k & pmask) == prefix) atomicAdd(&hist[(k >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            uint32_t need = sh_remaining, above = 0;
            int b = 255;
            for (; b > 0; --b) {
                if (above + hist[b] >= need) break;
                above += hist[b];
            }
            sh_remaining = need - above;
            sh_prefix = prefix | ((uint32_t)b << shift);
            sh_mask = pmask | (255u << shift);
        }
        __syncthreads();
    }
    const uint32_t thr = sh_prefix, need_eq = it.m > 0 ? sh_remaining : 0u;

    // Sinks and window.
    for (uint32_t t = tid; t < it.lo; t += kSelThreads) kept[t] = t;
    for (uint32_t t = it.hi + tid; t < it.T; t += kSelThreads) kept[it.lo + it.m + (t - it.hi)] = t;
    // Chosen candidates in token order.
    uint32_t base = 0, eq_seen = 0;
    for (uint32_t c = it.lo; c < it.hi; c += kSelThreads) {
        const uint32_t t = c + tid;
        const uint32_t k = t < it.hi ? row_key(it, r, t) : 0u;
        const bool live = t < it.hi && it.m > 0;
        const uint32_t eq = live && k == thr ? 1u : 0u;
        uint32_t eq_total, take_total;
        const uint32_t eq_rank = block_scan(eq, scan, &eq_total) + eq_seen;
        const uint32_t take = live && (k > thr || (eq && eq_rank < need_eq)) ? 1u : 0u;
        const uint32_t pos = block_scan(take, scan, &take_total) + base;
        if (take) kept[it.lo + pos] = t;
        base += take_total;
        eq_seen += eq_total;
    }
}

}  // namespace

cudaError_t run_select(const SelectLaunch &a, const SelectItem *host_items, cudaStream_t stream) {
    bool any_shared = false;
    for (uint32_t i = 0; i < a.n_items; ++i) any_shared |= host_items[i].rows == 1;
    if (a.norm_rows) {
        auto k = norm_kernel;
        unsigned grid = (unsigned)((a.norm_rows + kSelThreads - 1) / kSelThreads);
        if (grid > 65535u * 8) grid = 65535u * 8;
        NQ_LAUNCH(k, dim3(grid), dim3(kSelThreads), stream, a.items, a.n_items, a.norm_rows);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
    }
    if (any_shared) {
        auto k = sum_kernel;
        NQ_LAUNCH(k, dim3(64, a.n_items), dim3(kSelThreads), stream, a.items, a.n_items);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
    }
    auto k = select_kernel;
    NQ_LAUNCH(k, dim3(a.total_rows), dim3(kSelThreads), stream, a.items, a.n_items);
    return cudaGetLastError();
}

}  // namespace gpu
}  // namespace nq
