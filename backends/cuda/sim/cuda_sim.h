// A CPU stand-in for the part of the CUDA runtime and device language the backend uses.
// Each thread block runs on blockDim host threads (blocks one after another), lane
// exchanges and barriers are real barriers, "device memory" is host memory, streams are
// ignored (everything completes before the call returns). It exists to test the
// kernels' indexing, lane exchanges and byte output on machines without a GPU; it says
// nothing about speed, and graph capture is not modelled.
#pragma once
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <atomic>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint4 {
    unsigned x, y, z, w;
};
struct uint2 {
    unsigned x, y;
};

namespace nq_sim {

class Barrier {
  public:
    explicit Barrier(unsigned n) : n_(n) {}
    void wait() {
        std::unique_lock<std::mutex> lk(m_);
        unsigned gen = gen_;
        if (++waiting_ == n_) {
            waiting_ = 0;
            ++gen_;
            cv_.notify_all();
            return;
        }
        cv_.wait(lk, [&] { return gen != gen_; });
    }

  private:
    std::mutex m_;
    std::condition_variable cv_;
    unsigned n_, waiting_ = 0, gen_ = 0;
};

struct BlockState {
    unsigned nthreads = 0;
    std::unique_ptr<Barrier> block_bar;
    std::mutex m;
    std::map<uint64_t, std::unique_ptr<Barrier>> lane_bars;
    std::vector<uint64_t> slots;
    Barrier &lanes(unsigned warp, unsigned mask) {
        std::lock_guard<std::mutex> lk(m);
        uint64_t key = ((uint64_t)warp << 32) | mask;
        auto it = lane_bars.find(key);
        if (it == lane_bars.end())
            it = lane_bars.emplace(key, std::make_unique<Barrier>((unsigned)__builtin_popcount(mask))).first;
        return *it->second;
    }
};

inline thread_local dim3 tl_thread, tl_block;
inline dim3 g_block_dim, g_grid_dim;
inline BlockState *g_state = nullptr;

inline void launch(dim3 grid, dim3 block, const std::function<void()> &fn) {
    g_block_dim = block;
    g_grid_dim = grid;
    for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned b = 0; b < grid.x; ++b) {
        BlockState st;
        st.nthreads = block.x;
        st.block_bar = std::make_unique<Barrier>(block.x);
        st.slots.assign(block.x, 0);
        g_state = &st;
        std::vector<std::thread> th;
        th.reserve(block.x);
        for (unsigned t = 0; t < block.x; ++t)
            th.emplace_back([&, t, b, by, bz] {
                tl_thread = dim3(t, 0, 0);
                tl_block = dim3(b, by, bz);
                fn();
            });
        for (auto &x : th) x.join();
        g_state = nullptr;
    }
}

}  // namespace nq_sim

#define threadIdx (::nq_sim::tl_thread)
#define blockIdx (::nq_sim::tl_block)
#define blockDim (::nq_sim::g_block_dim)
#define gridDim (::nq_sim::g_grid_dim)

inline void __syncthreads() { nq_sim::g_state->block_bar->wait(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { nq_sim::g_state->lanes(threadIdx.x >> 5, mask).wait(); }

template <class T> T nq_sim_exchange(unsigned mask, T v, unsigned src_lane) {
    static_assert(sizeof(T) <= 8, "exchange of more than 8 bytes");
    auto &st = *nq_sim::g_state;
    const unsigned tid = threadIdx.x, warp = tid >> 5;
    uint64_t slot = 0;
    std::memcpy(&slot, &v, sizeof(T));
    st.slots[tid] = slot;
    st.lanes(warp, mask).wait();
    T r;
    uint64_t got = st.slots[warp * 32 + src_lane];
    std::memcpy(&r, &got, sizeof(T));
    st.lanes(warp, mask).wait();
    return r;
}
template <class T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    unsigned lane = threadIdx.x & 31u;
    unsigned src = lane ^ (unsigned)lane_mask;
    if ((src & ~(unsigned)(width - 1)) != (lane & ~(unsigned)(width - 1))) src = lane;
    return nq_sim_exchange(mask, v, src);
}
template <class T> T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    unsigned lane = threadIdx.x & 31u;
    unsigned src = (lane & ~(unsigned)(width - 1)) + ((unsigned)src_lane & (unsigned)(width - 1));
    return nq_sim_exchange(mask, v, src);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    unsigned lane = threadIdx.x & 31u;
    auto &st = *nq_sim::g_state;
    const unsigned tid = threadIdx.x, warp = tid >> 5;
    st.slots[tid] = pred ? 1 : 0;
    st.lanes(warp, mask).wait();
    unsigned r = 0;
    for (unsigned l = 0; l < 32; ++l)
        if ((mask >> l) & 1u) r |= (st.slots[warp * 32 + l] ? 1u : 0u) << l;
    st.lanes(warp, mask).wait();
    (void)lane;
    return r;
}
inline unsigned atomicAdd(unsigned *p, unsigned v) {
    static std::mutex m;
    std::lock_guard<std::mutex> lk(m);
    unsigned old = *p;
    *p = old + v;
    return old;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
// Blocks run one after another on the host: a fence has nothing to order.
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
// The fast single-precision sincos (the device's is accurate to ~1e-6 on [-pi, pi]).
inline void __sincosf(float x, float *s, float *c) {
    *s = std::sin(x);
    *c = std::cos(x);
}
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}

// ---- runtime API subset
typedef int cudaError_t;
typedef void *cudaStream_t;
typedef void *cudaEvent_t;
enum { cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorNoDevice = 100, cudaErrorInvalidValue = 1 };
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
enum { cudaStreamNonBlocking = 1 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };

inline cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int *d) {
    *d = 0;
    return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
inline cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr, int) {
    *v = 2;
    return cudaSuccess;
}
template <class K> cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n, K, int, size_t) {
    *n = 1;
    return cudaSuccess;
}
inline cudaError_t cudaMalloc(void **p, size_t n) {
    *p = std::aligned_alloc(256, (n + 255) / 256 * 256 + 256);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFree(void *p) {
    std::free(p);
    return cudaSuccess;
}
inline cudaError_t cudaMallocHost(void **p, size_t n) { return cudaMalloc(p, n); }
inline cudaError_t cudaFreeHost(void *p) { return cudaFree(p); }
inline cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind) {
    std::memcpy(d, s, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t = nullptr) {
    std::memcpy(d, s, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t = nullptr) {
    std::memset(d, v, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemset(void *d, int v, size_t n) {
    std::memset(d, v, n);
    return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) {
    *s = nullptr;
    return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t *s) {
    *s = nullptr;
    return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
inline const char *cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "simulated error"; }
