// Token selection on the device, the same choice as the host's select_tokens: for each
// row (a KV head, or all heads summed), keep the m best candidates of [lo, hi) by score,
// higher first, ties to the earlier token, NaN last (-0 equals +0), listed in token
// order after the sinks and before the recent window.
#include "gpu_runtime.h"  // first: the runtime defines __host__/__device__ for the shared headers
#include <algorithm>
#include <cmath>

#include "../../src/core/nq_expf.h"
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
        while (i < n_items && rem >= (items[i].key_norm ? (uint64_t)items[i].H * items[i].T : 0ull)) {
            rem -= items[i].key_norm ? (uint64_t)items[i].H * items[i].T : 0ull;
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

// One block per query head: the queries one after another (their probabilities are
// added to acc in query order), each in three passes over its visible keys.
__global__ void __launch_bounds__(kSelThreads) query_kernel(const NQ_GRID_CONSTANT QueryLaunch L) {
    __shared__ float q[kMaxHeadDim];
    __shared__ float red[kSelThreads];
    __shared__ float sh_m, sh_inv_z;
    const QueryParams &p = L.p;
    const uint32_t qh = blockIdx.x, tid = threadIdx.x;
    const uint32_t h = qh / (p.Hq / p.H);
    float *logit = p.logits + (uint64_t)qh * p.T;
    float *acc = p.acc + (uint64_t)qh * p.T;
    for (uint32_t t = tid; t < p.T; t += kSelThreads) acc[t] = 0.0f;
    for (uint32_t i = 0; i < p.W; ++i) {
        const uint32_t n = L.visible[i];
        for (uint32_t d = tid; d < p.D; d += kSelThreads) {
            const int64_t o = (int64_t)qh * p.q_stride_head + (int64_t)i * p.q_stride_token + (int64_t)d * p.q_stride_dim;
            q[d] = p.q_dtype == kF32 ? static_cast<const float *>(p.q)[o]
                                     : half_to_float(static_cast<const uint16_t *>(p.q)[o], p.q_dtype);
        }
        __syncthreads();
        float m = -INFINITY;
        for (uint32_t t = tid; t < n; t += kSelThreads) {
            const int64_t off = layout_offset(p.kl, h, t), sd = p.kl.stride_dim;
            float s = 0.0f;
            for (uint32_t d = 0; d < p.D; ++d) {
                const float x = p.k_dtype == kF32 ? static_cast<const float *>(p.k)[off + (int64_t)d * sd]
                                                  : half_to_float(static_cast<const uint16_t *>(p.k)[off + (int64_t)d * sd],
                                                                  p.k_dtype);
                s += q[d] * x;
            }
            const float l = s * p.inv_sqrt_d;
            logit[t] = l;
            if (l > m) m = l;
        }
        red[tid] = m;
        __syncthreads();
        if (tid == 0) {
            float mm = -INFINITY;
            for (uint32_t j = 0; j < kSelThreads; ++j)
                if (red[j] > mm) mm = red[j];
            sh_m = mm;
        }
        __syncthreads();
        const float mx = sh_m;
        const bool skip = n == 0 || !(mx > -INFINITY && mx < INFINITY);
        if (!skip) {
            for (uint32_t t = tid; t < n; t += kSelThreads) logit[t] = nq_expf_nonpos(logit[t] - mx);
            __syncthreads();
            if (tid == 0) {  // the reference's sequential sum, in token order
                float z = 0.0f;
                for (uint32_t t = 0; t < n; ++t) z += logit[t];
                sh_inv_z = 1.0f / z;
            }
            __syncthreads();
            const float inv_z = sh_inv_z;
            for (uint32_t t = tid; t < n; t += kSelThreads) acc[t] += logit[t] * inv_z;
        }
        __syncthreads();
    }
    // Max-pool over [t - half, t + half] into logit (no longer needed).
    for (uint32_t t = tid; t < p.T; t += kSelThreads) {
        const uint32_t a = t > p.half_pool ? t - p.half_pool : 0;
        const uint32_t b = t + p.half_pool < p.T ? t + p.half_pool : p.T - 1;
        float mx = acc[a];
        for (uint32_t u = a + 1; u <= b; ++u) mx = acc[u] > mx ? acc[u] : mx;
        logit[t] = mx;
    }
}

// norm[h][t] = pooled sums of the query heads of KV head h, added in head order.
__global__ void __launch_bounds__(kSelThreads) query_sum_kernel(const NQ_GRID_CONSTANT QueryLaunch L) {
    const QueryParams &p = L.p;
    const uint32_t group = p.Hq / p.H;
    for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < (uint64_t)p.H * p.T;
         e += (uint64_t)gridDim.x * blockDim.x) {
        const uint32_t h = (uint32_t)(e / p.T), t = (uint32_t)(e % p.T);
        float s = 0.0f;
        for (uint32_t g = 0; g < group; ++g) s += p.logits[(uint64_t)(h * group + g) * p.T + t];
        p.norm[e] = s;
    }
}

}  // namespace

cudaError_t run_queries(int device, const QueryLaunch &l, cudaStream_t stream) {
    (void)device;
    auto k = query_kernel;
    NQ_LAUNCH(k, dim3(l.p.Hq), dim3(kSelThreads), stream, l);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    auto k2 = query_sum_kernel;
    unsigned grid = (unsigned)std::min<uint64_t>(((uint64_t)l.p.H * l.p.T + kSelThreads - 1) / kSelThreads, 4096);
    NQ_LAUNCH(k2, dim3(grid), dim3(kSelThreads), stream, l);
    return cudaGetLastError();
}

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
