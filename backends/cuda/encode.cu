// The compress kernel: one launch writes every block of a batch (header, padding,
// positions, scales, codes, fp16 rows). K and V are read once, each block byte is
// written once. See kernels.cuh for how a head vector is spread over a lane group.
// Key-centred items (FORMAT.md 1.8) get their k_mean section from two launches before it
// (key_mean_runs_kernel, key_mean_finish_kernel), which the compress kernel reads back
// before it scales keys.
#include "gpu_runtime.h"  // first: the runtime defines __host__/__device__ for the shared headers
#include "../../src/core/format.h"
#include "launch.h"
#include "kernels.cuh"

namespace nq {
namespace gpu {

namespace {

// Rotated key rows one lane group puts into the chunk of key_mean_runs_kernel per round:
// several rows so that their loads are in flight together.
template <int E> constexpr int mean_rows() { return E == 8 ? 4 : 2; }

// The key mean (FORMAT.md 1.8) in two launches, as the CPU reference sums it
// (write_key_mean): the keys of the coded slots, RoPE removed when the block removes it,
// Hadamard-rotated as the compress kernel rotates them, summed in float64 in runs of
// kKeyMeanRun slots. key_mean_runs_kernel: one thread block per (item, head, run), so
// every run of every head is in flight at once; its lane groups rotate a chunk of the
// run's slots into shared memory, then thread d adds the chunk's values of dim d to its
// float64 sum in slot order, and the run's sums go to the workspace.
template <int E, int G>
__global__ void __launch_bounds__(kThreads) key_mean_runs_kernel(const EncodeItem *items, uint32_t n_items,
                                                                 uint32_t total_runs) {
    constexpr int R = mean_rows<E>();
    constexpr uint32_t P = (uint32_t)(G * E), groups = kThreads / G, per_chunk = R * groups;
    constexpr int dims = (int)((P + kThreads - 1) / kThreads);  // dims summed by one thread
    __shared__ float smem[kThreads * E];                        // RoPE exchange rows
    __shared__ float chunk[per_chunk * P];                      // rotated rows [slot of the chunk][P]
    const uint32_t lane32 = threadIdx.x & 31u, gl = threadIdx.x & (G - 1u), grp = threadIdx.x / G;
    const unsigned mask = group_mask(lane32, G);
    const uint32_t d0 = gl * E;
    const uint32_t signs = sign_bits<E>(d0);
    float *sm = smem + grp * P;
    RopePlan<E> plan;  // the batch's items share one context, hence one RoPE
    if (n_items) plan.init(d0, items[0].pairing, items[0].rotary_dims);
    for (uint32_t u = blockIdx.x; u < total_runs; u += gridDim.x) {
        const EncodeItem &it = items[find_item(items, n_items, u, [](const EncodeItem &x) { return x.run_begin; })];
        const uint32_t rem = u - it.run_begin, h = rem / it.runs, run = rem % it.runs, D = it.D, K = it.K;
        const uint32_t cb = run * kKeyMeanRun, ce = it.coded - cb < kKeyMeanRun ? it.coded : cb + kKeyMeanRun;
        const uint32_t *kept = it.kept ? it.kept + (uint64_t)(it.kept_rows > 1 ? h : 0) * K : nullptr;
        double sum[dims];
#pragma unroll
        for (int k = 0; k < dims; ++k) sum[k] = 0.0;
        for (uint32_t c0 = cb; c0 < ce; c0 += per_chunk) {
            float x[R][E];
#pragma unroll
            for (int r = 0; r < R; ++r) {  // every load first, then the exchanges
                const uint32_t c = c0 + (uint32_t)r * groups + grp;
                if (c < ce) {
                    const uint32_t j = it.s_end + c, t = kept ? kept[j] : j;
                    load_lane<E>(it.k, it.dtype, layout_offset(it.kl, h, t), it.kl.stride_dim, d0, D, x[r]);
                } else {
#pragma unroll
                    for (int e = 0; e < E; ++e) x[r][e] = 0.0f;
                }
            }
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const uint32_t q = (uint32_t)r * groups + grp, c = c0 + q;
                if (c < ce) {  // the same for every lane of the group
                    if (it.unrotate) {
                        const uint32_t j = it.s_end + c, t = kept ? kept[j] : j;
                        const uint32_t pos = it.positions ? it.positions[t] : it.start_position + t;
                        rope_planned<E>(x[r], sm, d0, plan, it.rope + (uint64_t)pos * (it.rotary_dims / 2), true,
                                        mask);
                    }
#pragma unroll
                    for (int e = 0; e < E; ++e)
                        if ((signs >> e) & 1u) x[r][e] = -x[r][e];
                    fwht_lanes<E>(x[r], hadamard_block(D), gl, mask);
                }
#pragma unroll
                for (int e = 0; e < E; ++e) chunk[q * P + d0 + (uint32_t)e] = x[r][e];
            }
            __syncthreads();
            const uint32_t n = ce - c0 < per_chunk ? ce - c0 : per_chunk;
#pragma unroll
            for (int k = 0; k < dims; ++k) {
                const uint32_t d = threadIdx.x + (uint32_t)k * kThreads;
                if (d < D)
                    for (uint32_t q = 0; q < n; ++q) sum[k] += (double)chunk[q * P + d];
            }
            __syncthreads();
        }
        double *out = it.mean_runs + ((uint64_t)h * it.runs + run) * D;
#pragma unroll
        for (int k = 0; k < dims; ++k) {
            const uint32_t d = threadIdx.x + (uint32_t)k * kThreads;
            if (d < D) out[d] = sum[k];
        }
    }
}

// Then one thread per (item, head, dim) adds the runs' sums in run order and writes the
// mean into the block's k_mean section, where the compress kernel reads it back.
__global__ void __launch_bounds__(kThreads) key_mean_finish_kernel(const EncodeItem *items, uint32_t n_items,
                                                                   uint32_t mean_heads, uint32_t D) {
    const uint64_t total = (uint64_t)mean_heads * D;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
        const uint32_t unit = (uint32_t)(i / D), d = (uint32_t)(i % D);
        const EncodeItem &it = items[find_item(items, n_items, unit, [](const EncodeItem &x) { return x.mean_begin; })];
        const uint32_t h = unit - it.mean_begin;
        const double *runs = it.mean_runs + (uint64_t)h * it.runs * D + d;
        double sum = 0.0;
        for (uint32_t r = 0; r < it.runs; ++r) sum += runs[(uint64_t)r * D];
        const float m = it.coded ? (float)(sum / (double)it.coded) : 0.0f;
        const uint16_t b = key_mean_f16(m);
        uint8_t *mean = it.dst + it.off[kSecKMean] + ((uint64_t)h * D + d) * 2;
        mean[0] = (uint8_t)b;
        mean[1] = (uint8_t)(b >> 8);
    }
}

template <int E, int G>
__global__ void __launch_bounds__(kThreads) encode_kernel(const EncodeItem *items, uint32_t n_items,
                                                          uint64_t total_rows, uint64_t total_pos) {
    __shared__ float smem[kThreads * E];
    const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const uint64_t nthreads = (uint64_t)gridDim.x * blockDim.x;

    // Header bytes and zero padding between sections.
    for (uint64_t u = tid; u < (uint64_t)n_items * kMetaUnits; u += nthreads) {
        const EncodeItem &it = items[u / kMetaUnits];
        const uint32_t k = (uint32_t)(u % kMetaUnits);
        if (k < 128) {
            it.dst[k] = it.header[k];
        } else {
            const uint32_t g = (k - 128) / 16, b = (k - 128) % 16;
            const uint64_t a = it.gap_begin[g] + b;
            if (a < it.gap_end[g]) it.dst[a] = 0;
        }
    }

    // Stored positions (offsets from first_position).
    for (uint64_t e = tid; e < total_pos; e += nthreads) {
        const uint32_t ii = find_item(items, n_items, e, [](const EncodeItem &x) { return x.pos_begin; });
        const EncodeItem &it = items[ii];
        const uint64_t rem = e - it.pos_begin;
        const uint32_t r = (uint32_t)(rem / it.K), j = (uint32_t)(rem % it.K);
        const uint32_t t = it.kept ? it.kept[(uint64_t)r * it.K + j] : j;
        const uint32_t pos = it.positions ? it.positions[t] : it.start_position + t;
        const uint32_t off = pos - it.first_position;
        uint8_t *p = it.dst + it.off[kSecPositions] + rem * it.pos_bytes;
        if (it.pos_bytes == 2) {
            p[0] = (uint8_t)off;
            p[1] = (uint8_t)(off >> 8);
        } else {
            p[0] = (uint8_t)off;
            p[1] = (uint8_t)(off >> 8);
            p[2] = (uint8_t)(off >> 16);
            p[3] = (uint8_t)(off >> 24);
        }
    }

    // Head vectors: rows [K rows of item 0][V rows of item 0][K rows of item 1]...
    const uint32_t lane32 = threadIdx.x & 31u, gl = threadIdx.x & (G - 1u);
    const unsigned mask = group_mask(lane32, G);
    const uint32_t d0 = gl * E;
    const uint32_t signs = sign_bits<E>(d0);
    float *sm = smem + (threadIdx.x / G) * (G * E);
    const uint64_t ngroups = nthreads / G;
    uint32_t ii = 0;
    uint64_t item_lo = 1, item_hi = 0;  // rows of item ii (empty: not looked up yet)
    RopePlan<E> plan;  // the batch's items share one context, hence one RoPE
    if (n_items) plan.init(d0, items[0].pairing, items[0].rotary_dims);
    for (uint64_t row = tid / G; row < total_rows; row += ngroups) {
        if (row < item_lo || row >= item_hi) {
            ii = find_item(items, n_items, row, [](const EncodeItem &x) { return x.row_begin; });
            item_lo = items[ii].row_begin;
            item_hi = ii + 1 < n_items ? items[ii + 1].row_begin : total_rows;
        }
        const EncodeItem &it = items[ii];
        const uint32_t D = it.D, K = it.K;
        uint32_t r = (uint32_t)(row - it.row_begin);  // 2 * H * K < 2^32 (checked on the host)
        const uint32_t HK = it.H * K;
        const bool is_v = r >= HK;
        if (is_v) r -= HK;
        const uint32_t h = r / K, j = r - h * K;
        const uint32_t t = it.kept ? it.kept[(uint64_t)(it.kept_rows > 1 ? h : 0) * K + j] : j;
        const Layout &l = is_v ? it.vl : it.kl;
        float x[E];
        load_lane<E>(is_v ? it.v : it.k, it.dtype, layout_offset(l, h, t), l.stride_dim, d0, D, x);

        if (j < it.s_end || j >= it.w_begin) {  // stored as fp16
            const uint32_t slot = j < it.s_end ? j : it.s_end + (j - it.w_begin);
            uint8_t *dst = it.dst + it.off[is_v ? kSecVRaw : kSecKRaw];
            store_lane<E>(dst, kF16, ((int64_t)h * it.raw + slot) * D, 1, d0, D, x);
            continue;
        }
        const uint64_t c = (uint64_t)h * it.coded + (j - it.s_end);
        if (!is_v && it.unrotate) {
            const uint32_t pos = it.positions ? it.positions[t] : it.start_position + t;
            rope_planned<E>(x, sm, d0, plan, it.rope + (uint64_t)pos * (it.rotary_dims / 2), true, mask);
        }
#pragma unroll
        for (int e = 0; e < E; ++e)
            if ((signs >> e) & 1u) x[e] = -x[e];
        fwht_lanes<E>(x, hadamard_block(D), gl, mask);
        if (!is_v && it.key_mean) {  // written by key_mean_kernel; lanes past D subtract 0
            float m[E];
            load_lane<E>(it.dst + it.off[kSecKMean], kF16, (int64_t)h * D, 1, d0, D, m);
#pragma unroll
            for (int e = 0; e < E; ++e) x[e] = x[e] - m[e];
        }
        const float ss = sum_squares_lanes<E, G>(x, gl, mask);

        const int bits = (int)(is_v ? it.v_bits : it.k_bits);
        uint16_t sbf = 0x7fc0u;  // inf/nan input: a NaN scale (the CPU backend rejects such input)
        float inv = 0.0f;
        if (ss <= 3.4028234e38f) {
            const float rms = sqrtf(ss / (float)D);
            sbf = f32_to_bf16((is_v ? it.v_alpha : it.k_alpha) * rms);
            if ((sbf & 0x7f80u) == 0) sbf = 0;
            const float s = bf16_to_f32(sbf);
            inv = s > 0.0f ? 1.0f / s : 0.0f;
        }
        if (gl == 0) {
            uint8_t *sp = it.dst + it.off[is_v ? kSecVScales : kSecKScales] + c * 2;
            sp[0] = (uint8_t)sbf;
            sp[1] = (uint8_t)(sbf >> 8);
        }
        uint8_t *codes = it.dst + it.off[is_v ? kSecVCodes : kSecKCodes] + c * (uint64_t)(D * (uint32_t)bits / 8);
#pragma unroll
        for (int g = 0; g < E / 8; ++g) {
            const uint32_t d = d0 + 8 * (uint32_t)g;
            if (d >= D) continue;
            float tv[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) tv[i] = x[8 * g + i] * inv;
            uint8_t *out = codes + (d / 8) * (uint32_t)bits;
            if (it.codec == kCodecE8)
                e8_encode_any(tv, bits, out);
            else
                scalar_encode_group(tv, bits, out);
        }
    }
}

template <int E, int G> cudaError_t launch_encode(const EncodeLaunch &a, cudaStream_t stream) {
    if (a.mean_heads) {  // ordered before the compress kernel on the stream
        if (a.mean_runs) {
            auto rk = key_mean_runs_kernel<E, G>;
            unsigned rgrid = grid_for(a.device, rk, (uint64_t)a.mean_runs * kThreads);
            NQ_LAUNCH(rk, dim3(rgrid), dim3(kThreads), stream, a.items, a.n_items, a.mean_runs);
            cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) return e;
        }
        auto fk = key_mean_finish_kernel;
        unsigned fgrid = grid_for(a.device, fk, (uint64_t)a.mean_heads * a.head_dim);
        NQ_LAUNCH(fk, dim3(fgrid), dim3(kThreads), stream, a.items, a.n_items, a.mean_heads, a.head_dim);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
    }
    auto kern = encode_kernel<E, G>;
    unsigned grid = grid_for(a.device, kern, a.work_groups * G);
    NQ_LAUNCH(kern, dim3(grid), dim3(kThreads), stream, a.items, a.n_items, a.total_rows, a.total_pos);
    return cudaGetLastError();
}

}  // namespace

cudaError_t run_encode(const EncodeLaunch &a, cudaStream_t stream) {
    switch (lanes_for(a.head_dim)) {
    case 1: return launch_encode<8, 1>(a, stream);
    case 2: return launch_encode<8, 2>(a, stream);
    case 4: return launch_encode<8, 4>(a, stream);
    case 8: return launch_encode<8, 8>(a, stream);
    case 16: return launch_encode<8, 16>(a, stream);
    case 32: return launch_encode<8, 32>(a, stream);
    default: return launch_encode<16, 32>(a, stream);
    }
}

}  // namespace gpu
}  // namespace nq
