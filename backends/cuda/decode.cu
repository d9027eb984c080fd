// The decode kernel: codes -> E8 points -> scale -> (+ key mean) -> inverse Hadamard -> RoPE at the
// stored positions -> the destination dtype, written once into a strided or paged
// destination. Fp16 rows of the block are converted and copied.
#include "gpu_runtime.h"  // first: the runtime defines __host__/__device__ for the shared headers
#include "../../src/core/format.h"
#include "launch.h"
#include "kernels.cuh"

namespace nq {
namespace gpu {

namespace {

__device__ __forceinline__ int64_t out_offset(const Layout &l, const int32_t *pages, uint32_t page_base, uint32_t h,
                                              uint32_t o) {
    if (l.page_size) {
        const int64_t page = pages[o / l.page_size - page_base];
        return page * l.stride_page + (int64_t)(o % l.page_size) * l.stride_token + (int64_t)h * l.stride_head;
    }
    return (int64_t)h * l.stride_head + (int64_t)o * l.stride_token;
}

template <int E, int G>
__global__ void __launch_bounds__(kThreads) decode_kernel(const NQ_GRID_CONSTANT DecodeLaunch L) {
    __shared__ float smem[kThreads * E];
    const DecodeParams &p = L.a.p;
    const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const uint64_t ngroups = (uint64_t)gridDim.x * blockDim.x / G;
    const uint32_t lane32 = threadIdx.x & 31u, gl = threadIdx.x & (G - 1u);
    const unsigned mask = group_mask(lane32, G);
    const uint32_t d0 = gl * E;
    const uint32_t signs = sign_bits<E>(d0);
    float *sm = smem + (threadIdx.x / G) * (G * E);
    const uint32_t D = p.D, n_block = hadamard_block(D);
    RopePlan<E> plan;
    plan.init(d0, p.pairing, p.rotary_dims);
    const float inv_n = 1.0f / (float)n_block;
    const uint32_t HC = p.H * p.count;  // 2 * H * count < 2^32 (checked on the host)
    for (uint64_t row = tid / G; row < 2ull * HC; row += ngroups) {
        uint32_t r = (uint32_t)row;
        const bool is_v = r >= HC;
        if (is_v) r -= HC;
        const uint32_t h = r / p.count, o = r - h * p.count;
        const uint32_t j = p.begin + o, out_t = p.out_begin + o;
        float x[E];
        if (j < p.s_end || j >= p.w_begin) {
            const uint32_t slot = j < p.s_end ? j : p.s_end + (j - p.w_begin);
            load_lane<E>(p.src + p.off[is_v ? kSecVRaw : kSecKRaw], kF16, ((int64_t)h * p.raw + slot) * D, 1, d0, D, x);
        } else {
            const uint64_t c = (uint64_t)h * p.coded + (j - p.s_end);
            const int bits = (int)(is_v ? p.v_bits : p.k_bits);
            const uint8_t *sp = p.src + p.off[is_v ? kSecVScales : kSecKScales] + c * 2;
            const float s = bf16_to_f32((uint16_t)(sp[0] | (sp[1] << 8)));
            const uint8_t *codes = p.src + p.off[is_v ? kSecVCodes : kSecKCodes] + c * (uint64_t)(D * (uint32_t)bits / 8);
#pragma unroll
            for (int g = 0; g < E / 8; ++g) {
                const uint32_t d = d0 + 8 * (uint32_t)g;
                float q[8];
                if (d < D) {
                    if (p.codec == kCodecE8)
                        e8_decode_any(codes + (d / 8) * (uint32_t)bits, bits, q);
                    else
                        scalar_decode_group(codes + (d / 8) * (uint32_t)bits, bits, q);
#pragma unroll
                    for (int i = 0; i < 8; ++i) x[8 * g + i] = q[i] * s;
                } else {
#pragma unroll
                    for (int i = 0; i < 8; ++i) x[8 * g + i] = 0.0f;
                }
            }
            if (!is_v && p.key_mean) {  // the head's key mean (FORMAT.md 1.8); lanes past D add 0
                float m[E];
                load_lane<E>(p.src + p.off[kSecKMean], kF16, (int64_t)h * D, 1, d0, D, m);
#pragma unroll
                for (int e = 0; e < E; ++e) x[e] = x[e] + m[e];
            }
            fwht_lanes<E>(x, n_block, gl, mask);
#pragma unroll
            for (int e = 0; e < E; ++e) {
                const float v = x[e] * inv_n;
                x[e] = ((signs >> e) & 1u) ? -v : v;
            }
            if (!is_v && p.rotate) {
                uint32_t pos = p.first_position + j;
                if (p.pos_rows) {
                    const uint8_t *e = p.src + p.off[kSecPositions] +
                                       ((uint64_t)(p.pos_rows > 1 ? h : 0) * p.K + j) * p.pos_bytes;
                    uint32_t offp = (uint32_t)e[0] | ((uint32_t)e[1] << 8);
                    if (p.pos_bytes == 4) offp |= ((uint32_t)e[2] << 16) | ((uint32_t)e[3] << 24);
                    pos = p.first_position + offp;
                }
                rope_planned<E>(x, sm, d0, plan, p.rope + (uint64_t)pos * (p.rotary_dims / 2), false, mask);
            }
        }
        const Layout &l = is_v ? p.vl : p.kl;
        store_lane<E>(is_v ? p.v : p.k, p.dtype, out_offset(l, is_v ? L.vpages : L.kpages,
                                                              is_v ? L.a.v_page_base : L.a.k_page_base, h, out_t),
                      l.stride_dim, d0, D, x);
    }
}

template <int E, int G> cudaError_t launch_decode(int device, const DecodeLaunch &l, cudaStream_t stream) {
    auto kern = decode_kernel<E, G>;
    unsigned grid = grid_for(device, kern, 2ull * l.a.p.H * l.a.p.count * G);
    NQ_LAUNCH(kern, dim3(grid), dim3(kThreads), stream, l);
    return cudaGetLastError();
}

}  // namespace

cudaError_t run_decode(int device, const DecodeLaunch &l, cudaStream_t stream) {
    switch (lanes_for(l.a.p.D)) {
    case 1: return launch_decode<8, 1>(device, l, stream);
    case 2: return launch_decode<8, 2>(device, l, stream);
    case 4: return launch_decode<8, 4>(device, l, stream);
    case 8: return launch_decode<8, 8>(device, l, stream);
    case 16: return launch_decode<8, 16>(device, l, stream);
    case 32: return launch_decode<8, 32>(device, l, stream);
    default: return launch_decode<16, 32>(device, l, stream);
    }
}

}  // namespace gpu
}  // namespace nq
