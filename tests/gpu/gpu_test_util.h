// Shared helpers of the GPU tests: random K/V in engine layouts, device buffers, and
// the runtime (CUDA, or the CPU stand-in when built with NQ_GPU_SIM).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "nexusquant.h"

#if defined(NQ_GPU_SIM)
#include "../../backends/cuda/sim/cuda_sim.h"
#else
#include <cuda_runtime.h>
#endif

namespace nqt {

inline bool device_present(std::string *why) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        *why = cudaGetErrorString(e);
        cudaGetLastError();
        return false;
    }
    if (n == 0) {
        *why = "no device";
        return false;
    }
    return true;
}

#define NQT_REQUIRE_DEVICE()                                                                           \
    do {                                                                                               \
        std::string why_;                                                                              \
        if (!nqt::device_present(&why_)) GTEST_SKIP() << "no CUDA device (" << why_ << "): skipped"; \
    } while (0)

#define NQT_CUDA(x) ASSERT_EQ((x), cudaSuccess) << #x << ": " << cudaGetErrorString(x)

enum class Kind { Strided, Transposed, PagedNHD, PagedHND };
inline const char *kind_name(Kind k) {
    switch (k) {
    case Kind::Strided: return "strided";
    case Kind::Transposed: return "transposed";
    case Kind::PagedNHD: return "paged_nhd";
    default: return "paged_hnd";
    }
}

inline uint32_t elem_bytes(nq_dtype t) { return t == NQ_DTYPE_F32 ? 4 : 2; }

// One K or V tensor in an engine layout, with its host copy.
struct Tensor {
    nq_layout layout{};
    std::vector<int32_t> pages;
    std::vector<uint8_t> host;  // the whole buffer
    size_t elems = 0;

    void make(Kind kind, uint32_t H, uint32_t T, uint32_t D, uint32_t esize, std::mt19937 &rng) {
        layout = nq_layout{};
        const uint32_t P = 16;
        switch (kind) {
        case Kind::Strided:
            layout.kind = NQ_LAYOUT_STRIDED;
            layout.stride_head = (int64_t)T * D;
            layout.stride_token = D;
            elems = (size_t)H * T * D;
            break;
        case Kind::Transposed:
            layout.kind = NQ_LAYOUT_STRIDED;
            layout.stride_token = (int64_t)H * D;
            layout.stride_head = D;
            elems = (size_t)H * T * D;
            break;
        case Kind::PagedNHD:
        case Kind::PagedHND: {
            layout.kind = NQ_LAYOUT_PAGED;
            layout.page_size = P;
            const uint32_t used = (T + P - 1) / P, total = used + 3;
            std::vector<int32_t> perm(total);
            for (uint32_t i = 0; i < total; ++i) perm[i] = (int32_t)i;
            std::shuffle(perm.begin(), perm.end(), rng);
            pages.assign(perm.begin(), perm.begin() + (used ? used : 1));
            layout.page_table = pages.data();
            layout.num_pages = total;
            layout.stride_page = (int64_t)P * H * D;
            if (kind == Kind::PagedNHD) {
                layout.stride_token = (int64_t)H * D;
                layout.stride_head = D;
            } else {
                layout.stride_head = (int64_t)P * D;
                layout.stride_token = D;
            }
            elems = (size_t)total * P * H * D;
            break;
        }
        }
        layout.stride_dim = 1;
        host.assign(elems * esize, 0);
    }

    size_t offset(uint32_t h, uint32_t t, uint32_t d) const {
        int64_t base;
        if (layout.kind == NQ_LAYOUT_PAGED)
            base = (int64_t)pages[t / layout.page_size] * layout.stride_page +
                   (int64_t)(t % layout.page_size) * layout.stride_token + (int64_t)h * layout.stride_head;
        else
            base = (int64_t)h * layout.stride_head + (int64_t)t * layout.stride_token;
        return (size_t)(base + (int64_t)d * layout.stride_dim);
    }

    void set(nq_dtype dt, size_t off, float v) {
        if (dt == NQ_DTYPE_F32) {
            std::memcpy(&host[off * 4], &v, 4);
        } else {
            uint16_t u = dt == NQ_DTYPE_BF16 ? nq::f32_to_bf16(v) : nq::f32_to_f16(v);
            std::memcpy(&host[off * 2], &u, 2);
        }
    }
};

// Fills the elements a layout addresses with keys-like data (a few large channels) and
// leaves the rest of the buffer at `fill`.
inline void fill_random(Tensor &x, nq_dtype dt, uint32_t H, uint32_t T, uint32_t D, std::mt19937 &rng, bool keys) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> chan(D, 1.0f);
    if (keys)
        for (uint32_t d = 0; d < D; d += 17) chan[d] = 8.0f;
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < T; ++t)
            for (uint32_t d = 0; d < D; ++d) x.set(dt, x.offset(h, t, d), nd(rng) * chan[d]);
}

// A device buffer.
struct DevBuf {
    void *p = nullptr;
    size_t n = 0;
    DevBuf() = default;
    explicit DevBuf(size_t bytes) { alloc(bytes); }
    void alloc(size_t bytes) {
        n = bytes;
        if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) p = nullptr;
    }
    ~DevBuf() {
        if (p) cudaFree(p);
    }
    DevBuf(const DevBuf &) = delete;
    DevBuf &operator=(const DevBuf &) = delete;
};

}  // namespace nqt
