// Host side of the GPU backend: turns planned blocks into kernel descriptors, moves
// them to the device through kernel parameters (ordered on the caller's stream, never
// synchronising it), keeps the per-context RoPE tables, and launches the kernels.
#include "gpu_runtime.h"  // first: the runtime defines __host__/__device__ for the shared headers
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include "../../src/backend.h"
#include "../../src/core/format.h"
#include "../../src/core/rope.h"
#include "../../src/core/vector_codec.h"
#include "../../src/format/block_rope.h"
#include "kernels.cuh"
#include "launch.h"

namespace nq {
namespace gpu {

namespace {

nq_status runtime_fail(cudaError_t e, const char *what) {
    return fail(NQ_ERR_DEVICE, "%s: %s (%d)", what, cudaGetErrorString(e), (int)e);
}

// Makes `device` current for the scope and restores the caller's device after.
struct DeviceScope {
    int prev = -1;
    cudaError_t err = cudaSuccess;
    explicit DeviceScope(int device) {
        if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
        if (prev != device) err = cudaSetDevice(device);
        else prev = -1;
    }
    ~DeviceScope() {
        if (prev >= 0) (void)cudaSetDevice(prev);
    }
};

struct UploadChunk {
    uint8_t *dst;
    uint32_t n;
    uint32_t reserved;
    uint8_t data[kParamPayload - 16];
};

__global__ void upload_kernel(const NQ_GRID_CONSTANT UploadChunk c) {
    for (uint32_t i = threadIdx.x; i < c.n; i += blockDim.x) c.dst[i] = c.data[i];
}

// ---------------------------------------------------------------- RoPE tables

struct RopeTable {
    int device;
    uint32_t positions;  // covers [0, positions)
    RopeCS *fwd;
    RopeCS *inv;  // == fwd when the attention factor is 1
};

struct State {
    std::mutex m;
    std::vector<RopeTable> live;     // one per device
    std::vector<RopeTable> retired;  // replaced by larger ones; freed with the context
};

std::mutex g_state_create;

State *state_of(nq_context *ctx) {
    std::lock_guard<std::mutex> lk(g_state_create);
    void *&slot = backend_state(ctx, kGpuMemory);
    if (!slot) {
        void *p = ctx->mem.alloc(sizeof(State), alignof(State));
        if (p) slot = new (p) State();
    }
    return static_cast<State *>(slot);
}

void release_table(const nq_context *ctx, const RopeTable &t) {
    if (t.inv != t.fwd) ctx->mem.release(t.inv, kGpuMemory, t.device);
    ctx->mem.release(t.fwd, kGpuMemory, t.device);
}

// The RoPE tables of the block's spec (which must be the context's: one table per
// device and context) on `device` covering positions [0, max_position]. Tables
// are computed on the host in float64 and rounded once (rope_tables, the CPU
// reference's values), copied once, and grown by doubling; building one is the only
// place the backend waits for the device (its own stream, never the caller's).
nq_status rope_tables_for(nq_context *ctx, int device, int64_t max_position, const BlockHeader &h, const RopeCS **fwd,
                          const RopeCS **inv) {
    if (h.rope_scaling == kRopeDynamicNtk)
        return fail(NQ_ERR_UNSUPPORTED, "dynamic NTK RoPE scaling is not supported by the %s backend", kGpuName);
    const RopeSpec spec = header_rope(h);
    if (!same_rope(spec, ctx->rope))
        return fail(NQ_ERR_UNSUPPORTED,
                    "the block's RoPE parameters differ from the context's: decode it with a context of the same RoPE");
    if (max_position < 0 || max_position >= (int64_t)1 << 31)
        return fail(NQ_ERR_UNSUPPORTED, "position %lld is beyond the %s backend's RoPE tables", (long long)max_position,
                    kGpuName);
    State *st = state_of(ctx);
    if (!st) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating the GPU state failed");
    std::lock_guard<std::mutex> lk(st->m);
    RopeTable *cur = nullptr;
    for (auto &t : st->live)
        if (t.device == device) cur = &t;
    if (cur && (int64_t)cur->positions > max_position) {
        *fwd = cur->fwd;
        *inv = cur->inv;
        return NQ_OK;
    }
    uint32_t n = 4096;
    while ((int64_t)n <= max_position) n <<= 1;
    const uint32_t nf = spec.rotary_dims / 2;
    double inv_freq[kMaxHeadDim / 2], mscale = 1.0;
    rope_inv_freq(spec, 0, inv_freq, &mscale);
    const bool two = mscale != 1.0;
    const size_t entries = (size_t)n * nf, bytes = entries * sizeof(RopeCS);
    RopeCS *host = static_cast<RopeCS *>(ctx->mem.alloc(bytes * (two ? 2 : 1), 64));
    if (!host) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating %zu bytes for RoPE tables failed", bytes);
    float cf[kMaxHeadDim / 2], sf[kMaxHeadDim / 2], ci[kMaxHeadDim / 2], si[kMaxHeadDim / 2];
    for (uint32_t p = 0; p < n; ++p) {
        rope_tables(inv_freq, nf, mscale, p, cf, sf, ci, si);
        for (uint32_t i = 0; i < nf; ++i) {
            host[(size_t)p * nf + i] = RopeCS{cf[i], sf[i]};
            if (two) host[entries + (size_t)p * nf + i] = RopeCS{ci[i], si[i]};
        }
    }
    RopeTable t{device, n, nullptr, nullptr};
    t.fwd = static_cast<RopeCS *>(ctx->mem.alloc(bytes, 256, kGpuMemory, device));
    t.inv = two ? static_cast<RopeCS *>(ctx->mem.alloc(bytes, 256, kGpuMemory, device)) : t.fwd;
    if (!t.fwd || !t.inv) {
        if (t.fwd) ctx->mem.release(t.fwd, kGpuMemory, device);
        if (two && t.inv) ctx->mem.release(t.inv, kGpuMemory, device);
        ctx->mem.release(host);
        return fail(NQ_ERR_OUT_OF_MEMORY, "allocating %zu bytes of device memory for RoPE tables failed", bytes);
    }
    cudaStream_t s = nullptr;
    cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaMemcpyAsync(t.fwd, host, bytes, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess && two) e = cudaMemcpyAsync(t.inv, host + entries, bytes, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (s) (void)cudaStreamDestroy(s);
    ctx->mem.release(host);
    if (e != cudaSuccess) {
        release_table(ctx, t);
        return runtime_fail(e, "copying RoPE tables to the device");
    }
    if (cur) {
        st->retired.push_back(*cur);
        *cur = t;
    } else {
        st->live.push_back(t);
    }
    *fwd = t.fwd;
    *inv = t.inv;
    return NQ_OK;
}

// ---------------------------------------------------------------- descriptors

Layout to_layout(const nq_layout &l, const int32_t *device_pages) {
    Layout o{};
    o.stride_head = l.stride_head;
    o.stride_token = l.stride_token;
    o.stride_dim = l.stride_dim ? l.stride_dim : 1;
    if (l.kind == NQ_LAYOUT_PAGED) {
        o.pages = device_pages;
        o.page_size = l.page_size;
        o.stride_page = l.stride_page;
    }
    return o;
}

uint32_t pages_of(const nq_layout &l, uint32_t tokens) {
    return l.kind == NQ_LAYOUT_PAGED ? (tokens + l.page_size - 1) / l.page_size : 0;
}

constexpr size_t kAlign = 64;
inline size_t up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Key-mean runs (FORMAT.md 1.8) of a head with `coded` coded slots.
inline size_t mean_run_count(size_t coded) { return (coded + kKeyMeanRun - 1) / kKeyMeanRun; }

// Bytes of the workspace for one item: page tables, positions, kept tokens, the device
// selection's scores and output, and the key-mean run sums.
size_t item_bytes(const nq_context *ctx, const nq_kv_desc &kv) {
    const size_t T = kv.num_tokens, H = ctx->cfg.num_kv_heads, Hq = ctx->cfg.num_q_heads;
    size_t n = up(pages_of(kv.k_layout, kv.num_tokens) * 4) + up(pages_of(kv.v_layout, kv.num_tokens) * 4) + up(T * 4);
    if (layer_params(ctx, kv.layer).evict_fraction > 0.0f)  // selection: kept tokens, scores, query scratch
        n += up(H * T * 4) + up((H + 1) * T * 4) + 2 * up(Hq * T * 4);
    if (ctx->cfg.key_centering)  // key mean: float64 sums of the runs of at most T coded slots
        n += up(mean_run_count(T) * H * ctx->cfg.head_dim * sizeof(double));
    return n;
}

// Host staging that mirrors the front of the workspace.
struct Stage {
    uint8_t *host = nullptr;
    size_t used = 0, cap = 0;
    size_t take(size_t n) {
        size_t off = up(used);
        used = off + n;
        return off;
    }
};

}  // namespace
}  // namespace gpu

using namespace gpu;

nq_status gpu_device_check(int32_t device) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0)
        return fail(NQ_ERR_BACKEND_UNAVAILABLE, "the %s backend has no device: %s", kGpuName,
                    e != cudaSuccess ? cudaGetErrorString(e) : "no device found");
    if (device < 0 || device >= n)
        return fail(NQ_ERR_INVALID_ARGUMENT, "device %d: the %s runtime has %d device(s)", device, kGpuName, n);
    return NQ_OK;
}

void *gpu_alloc(size_t bytes, int32_t device) {
    DeviceScope ds(device);
    if (ds.err != cudaSuccess) return nullptr;
    void *p = nullptr;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError();
        return nullptr;
    }
    return p;
}

void gpu_free(void *p, int32_t device) {
    if (!p) return;
    DeviceScope ds(device);
    (void)cudaFree(p);
}

nq_status gpu_copy(void *dst, nq_memory, const void *src, nq_memory, size_t bytes, int32_t device, void *stream) {
    DeviceScope ds(device);
    if (ds.err != cudaSuccess) return runtime_fail(ds.err, "selecting the device");
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream));
    if (e != cudaSuccess) return runtime_fail(e, "copying the block");
    return NQ_OK;
}

void gpu_context_release(nq_context *ctx, void *state) {
    if (!state) return;
    State *st = static_cast<State *>(state);
    for (auto &t : st->live) release_table(ctx, t);
    for (auto &t : st->retired) release_table(ctx, t);
    st->~State();
    ctx->mem.release(st);
}

size_t gpu_workspace_bound(const nq_context *ctx, const nq_kv_desc *items, size_t n) {
    size_t total = up(n * sizeof(EncodeItem)) + up(n * sizeof(SelectItem)) + kAlign;
    for (size_t i = 0; i < n; ++i) total += item_bytes(ctx, items[i]);
    return total;
}

nq_status gpu_compress(nq_context *ctx, const BatchItem *items, size_t n, void *workspace, size_t workspace_bytes,
                       void *stream_v) {
    if (n == 0) return NQ_OK;
    cudaStream_t stream = static_cast<cudaStream_t>(stream_v);
    const int device = items[0].job.kv->device;
    for (size_t i = 1; i < n; ++i)
        if (items[i].job.kv->device != device)
            return fail(NQ_ERR_UNSUPPORTED, "items[%zu].device is %d, items[0].device %d: one device per batch", i,
                        items[i].job.kv->device, device);
    DeviceScope ds(device);
    if (ds.err != cudaSuccess) return runtime_fail(ds.err, "selecting the device");
    if ((uintptr_t)workspace % kAlign) return fail(NQ_ERR_INVALID_ARGUMENT, "workspace must be 64-byte aligned");

    // RoPE tables first: they may need building (host work, one wait on a private stream).
    std::vector<const RopeCS *> rope(n, nullptr);
    for (size_t i = 0; i < n; ++i) {
        const EncodeJob &jb = items[i].job;
        if (jb.h->rope_mode != NQ_ROPE_REMOVE) continue;
        const RopeCS *fwd, *inv;
        NQ_TRY(rope_tables_for(ctx, device, jb.positions[jb.kv->num_tokens - 1], *jb.h, &fwd, &inv));
        rope[i] = inv;
    }

    // Lay out the workspace: descriptors and uploaded arrays first, device scratch after.
    size_t n_sel = 0;
    for (size_t i = 0; i < n; ++i) n_sel += items[i].sel_rows ? 1 : 0;
    Stage sg;
    const size_t items_off = sg.take(n * sizeof(EncodeItem));
    const size_t sel_off = sg.take(n_sel * sizeof(SelectItem));
    struct Arr {
        size_t kpages = 0, vpages = 0, positions = 0, kept = 0;
        bool has_k = false, has_v = false, has_pos = false, has_kept = false;
    };
    std::vector<Arr> arr(n);
    for (size_t i = 0; i < n; ++i) {
        const EncodeJob &jb = items[i].job;
        const nq_kv_desc &kv = *jb.kv;
        const uint32_t T = kv.num_tokens;
        Arr &a = arr[i];
        if (kv.k_layout.kind == NQ_LAYOUT_PAGED) a.has_k = true, a.kpages = sg.take(pages_of(kv.k_layout, T) * 4);
        if (kv.v_layout.kind == NQ_LAYOUT_PAGED) a.has_v = true, a.vpages = sg.take(pages_of(kv.v_layout, T) * 4);
        const bool contiguous = jb.positions[T - 1] - jb.positions[0] == (int64_t)T - 1;
        if (!contiguous) a.has_pos = true, a.positions = sg.take((size_t)T * 4);
        if (jb.kept) a.has_kept = true, a.kept = sg.take((size_t)jb.kept_rows * jb.h->tokens_kept * 4);
    }
    const size_t staged = up(sg.used);
    std::vector<size_t> norm_off(n, 0), dkept_off(n, 0), query_off(n, 0), runs_off(n, 0);
    size_t dev_used = staged;
    for (size_t i = 0; i < n; ++i) {
        const BlockHeader &h = *items[i].job.h;
        if (h.flags & kFlagKeyMean) {
            runs_off[i] = dev_used;
            dev_used = up(dev_used + mean_run_count(items[i].job.g->coded) * h.num_heads * h.head_dim * sizeof(double));
        }
        if (!items[i].sel_rows) continue;
        const size_t H = items[i].job.h->num_heads, T = items[i].job.kv->num_tokens;
        norm_off[i] = dev_used;
        dev_used = up(dev_used + (H + 1) * T * 4);
        dkept_off[i] = dev_used;
        dev_used = up(dev_used + (size_t)items[i].sel_rows * items[i].job.h->tokens_kept * 4);
        if (items[i].scores.kind == NQ_SCORES_QUERIES) {
            query_off[i] = dev_used;
            dev_used = up(dev_used + (size_t)ctx->cfg.num_q_heads * T * 4 * 2);
        }
    }
    if (dev_used > workspace_bytes)
        return fail(NQ_ERR_BUFFER_TOO_SMALL, "workspace is %zu bytes, this batch needs %zu (nq_workspace_size)",
                    workspace_bytes, dev_used);
    uint8_t *ws = static_cast<uint8_t *>(workspace);

    sg.cap = staged;
    sg.host = static_cast<uint8_t *>(ctx->mem.alloc(staged ? staged : 1, 64));
    if (!sg.host) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating %zu bytes of host staging failed", staged);
    std::memset(sg.host, 0, staged);
    struct Free {
        const MemoryHooks &m;
        void *p;
        ~Free() { m.release(p); }
    } free_stage{ctx->mem, sg.host};

    EncodeItem *ei = reinterpret_cast<EncodeItem *>(sg.host + items_off);
    SelectItem *si = reinterpret_cast<SelectItem *>(sg.host + sel_off);
    std::vector<SelectItem> sel_host;
    uint64_t rows = 0, pos_entries = 0;
    uint32_t sel_rows_total = 0, max_heads = 0, mean_heads = 0, mean_runs = 0;
    uint64_t norm_rows = 0;
    for (size_t i = 0; i < n; ++i) {
        const BatchItem &gi = items[i];
        const EncodeJob &jb = gi.job;
        const nq_kv_desc &kv = *jb.kv;
        const BlockHeader &h = *jb.h;
        const BlockGeometry &g = *jb.g;
        const Arr &a = arr[i];
        const uint32_t T = kv.num_tokens, K = h.tokens_kept, H = h.num_heads;
        if (a.has_k) std::memcpy(sg.host + a.kpages, kv.k_layout.page_table, pages_of(kv.k_layout, T) * 4);
        if (a.has_v) std::memcpy(sg.host + a.vpages, kv.v_layout.page_table, pages_of(kv.v_layout, T) * 4);
        if (a.has_pos) {
            uint32_t *p = reinterpret_cast<uint32_t *>(sg.host + a.positions);
            for (uint32_t t = 0; t < T; ++t) p[t] = (uint32_t)jb.positions[t];
        }
        if (a.has_kept) std::memcpy(sg.host + a.kept, jb.kept, (size_t)jb.kept_rows * K * 4);

        EncodeItem &e = ei[i];
        e.k = kv.k;
        e.v = kv.v;
        e.kl = to_layout(kv.k_layout, a.has_k ? reinterpret_cast<const int32_t *>(ws + a.kpages) : nullptr);
        e.vl = to_layout(kv.v_layout, a.has_v ? reinterpret_cast<const int32_t *>(ws + a.vpages) : nullptr);
        e.dst = jb.dst;
        e.positions = a.has_pos ? reinterpret_cast<const uint32_t *>(ws + a.positions) : nullptr;
        e.start_position = (uint32_t)jb.positions[0];
        e.kept = a.has_kept ? reinterpret_cast<const uint32_t *>(ws + a.kept)
                            : (gi.sel_rows ? reinterpret_cast<const uint32_t *>(ws + dkept_off[i]) : nullptr);
        e.kept_rows = a.has_kept ? jb.kept_rows : (gi.sel_rows ? gi.sel_rows : 1);
        e.rope = rope[i];
        for (int s = 0; s < kNumSections; ++s) e.off[s] = g.offset[s];
        e.off[kNumSections] = g.total;
        for (int s = 0; s < kNumSections; ++s) e.gap_begin[s] = e.gap_end[s] = 0;
        for (int s = 0; s < kNumSections; ++s) {
            e.gap_begin[s] = g.offset[s] + g.length[s];
            e.gap_end[s] = s + 1 < kNumSections ? g.offset[s + 1] : g.total;
        }
        if (2ull * H * K >= (1ull << 32))
            return fail(NQ_ERR_UNSUPPORTED, "an item of %u heads x %u tokens is too large for one GPU block", H, K);
        e.row_begin = rows;
        rows += 2ull * H * K;
        e.pos_begin = pos_entries;
        pos_entries += (uint64_t)g.pos_rows * K;
        e.first_position = (uint32_t)h.first_position;
        e.H = H;
        e.D = h.head_dim;
        e.T = T;
        e.K = K;
        e.s_end = h.fp16_sinks;
        e.w_begin = K - h.fp16_window;
        e.coded = g.coded;
        e.raw = g.raw;
        e.pos_rows = g.pos_rows;
        e.pos_bytes = g.pos_bytes;
        e.dtype = (uint32_t)kv.dtype;
        e.codec = h.codec;
        e.k_bits = h.k_bits;
        e.v_bits = h.v_bits;
        e.unrotate = h.rope_mode == NQ_ROPE_REMOVE ? 1u : 0u;
        e.pairing = h.rope_pairing;
        e.rotary_dims = h.rotary_dims;
        e.k_alpha = codec_alpha(h.codec, h.k_bits);
        e.v_alpha = codec_alpha(h.codec, h.v_bits);
        e.key_mean = (h.flags & kFlagKeyMean) ? 1u : 0u;
        e.mean_begin = mean_heads;
        mean_heads += e.key_mean ? H : 0u;
        e.runs = e.key_mean ? (uint32_t)mean_run_count(g.coded) : 0u;
        e.run_begin = mean_runs;
        mean_runs += H * e.runs;
        e.mean_runs = e.key_mean ? reinterpret_cast<double *>(ws + runs_off[i]) : nullptr;
        header_write(h, e.header);

        if (gi.sel_rows) {
            SelectItem s{};
            const nq_score_desc &sc = gi.scores;
            if (sc.kind == NQ_SCORES_GIVEN) {
                s.scores = sc.scores;
                s.stride_head = sc.score_stride_head;
                s.stride_token = sc.score_stride_token;
            } else if (sc.kind == NQ_SCORES_KEY_NORM) {
                s.key_norm = 1;
                norm_rows += (uint64_t)H * T;
            }
            s.norm = reinterpret_cast<float *>(ws + norm_off[i]);
            s.kept = reinterpret_cast<uint32_t *>(ws + dkept_off[i]);
            s.k = kv.k;
            s.kl = e.kl;
            s.H = H;
            s.D = h.head_dim;
            s.T = T;
            s.K = K;
            s.dtype = (uint32_t)kv.dtype;
            s.lo = gi.sel_lo;
            s.hi = gi.sel_hi;
            s.m = gi.sel_m;
            s.rows = gi.sel_rows;
            s.row_begin = sel_rows_total;
            sel_rows_total += gi.sel_rows;
            max_heads = std::max(max_heads, H);
            si[sel_host.size()] = s;
            sel_host.push_back(s);
        }
    }

    cudaError_t err = upload(ws, sg.host, staged, stream);
    if (err != cudaSuccess) return runtime_fail(err, "uploading the batch descriptors");
    // Query scores, one launch pair per item that has them.
    for (size_t i = 0; i < n; ++i) {
        const BatchItem &gi = items[i];
        if (!gi.sel_rows || gi.scores.kind != NQ_SCORES_QUERIES) continue;
        const nq_score_desc &sc = gi.scores;
        const nq_kv_desc &kv = *gi.job.kv;
        const uint32_t T = kv.num_tokens, W = sc.num_queries, Hq = ctx->cfg.num_q_heads;
        if (W > kMaxQueries)
            return fail(NQ_ERR_UNSUPPORTED, "scores.num_queries is %u: the %s backend takes at most %u", W, kGpuName,
                        kMaxQueries);
        QueryLaunch *ql = static_cast<QueryLaunch *>(ctx->mem.alloc(sizeof(QueryLaunch), 64));
        if (!ql) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating query launch parameters failed");
        std::memset(ql, 0, sizeof *ql);
        QueryParams &q = ql->p;
        q.q = sc.queries;
        q.q_stride_head = sc.q_stride_head;
        q.q_stride_token = sc.q_stride_token;
        q.q_stride_dim = sc.q_stride_dim ? sc.q_stride_dim : 1;
        q.k = kv.k;
        q.kl = ei[i].kl;
        q.logits = reinterpret_cast<float *>(ws + query_off[i]);
        q.acc = q.logits + (size_t)Hq * T;
        q.norm = reinterpret_cast<float *>(ws + norm_off[i]);
        q.inv_sqrt_d = (float)(1.0 / std::sqrt((double)ctx->cfg.head_dim));
        q.q_dtype = (uint32_t)sc.query_dtype;
        q.k_dtype = (uint32_t)kv.dtype;
        q.Hq = Hq;
        q.H = ctx->cfg.num_kv_heads;
        q.D = ctx->cfg.head_dim;
        q.T = T;
        q.W = W;
        q.half_pool = (sc.pool_kernel ? sc.pool_kernel : kDefaultPoolKernel) / 2;
        const int64_t *pos = gi.job.positions;
        for (uint32_t w = 0; w < W; ++w) {
            const int64_t qpos = sc.query_positions ? sc.query_positions[w] : pos[T - W + w];
            uint32_t vis = (uint32_t)(std::upper_bound(pos, pos + T, qpos) - pos);
            ql->visible[w] = vis;
        }
        err = run_queries(device, *ql, stream);
        ctx->mem.release(ql);
        if (err != cudaSuccess) return runtime_fail(err, "launching query scores");
    }
    if (!sel_host.empty()) {
        SelectLaunch sl{device, reinterpret_cast<const SelectItem *>(ws + sel_off), (uint32_t)sel_host.size(),
                        sel_rows_total, norm_rows, max_heads};
        err = run_select(sl, sel_host.data(), stream);
        if (err != cudaSuccess) return runtime_fail(err, "launching token selection");
    }
    const uint32_t G = lanes_for(ctx->cfg.head_dim) == 64 ? 32 : lanes_for(ctx->cfg.head_dim);
    EncodeLaunch el{device, ctx->cfg.head_dim, reinterpret_cast<const EncodeItem *>(ws + items_off), (uint32_t)n,
                    rows, pos_entries, 0, mean_heads, mean_runs};
    el.work_groups = std::max<uint64_t>(rows, std::max<uint64_t>((n * kMetaUnits + G - 1) / G, (pos_entries + G - 1) / G));
    err = run_encode(el, stream);
    if (err != cudaSuccess) return runtime_fail(err, "launching the compress kernel");
    return NQ_OK;
}

nq_status gpu_decode(nq_context *ctx, const nq_block &b, uint32_t begin, uint32_t end, const nq_kv_desc &out,
                     void *stream_v) {
    cudaStream_t stream = static_cast<cudaStream_t>(stream_v);
    if (out.device != b.device)
        return fail(NQ_ERR_UNSUPPORTED, "out.device is %d but the block is on device %d", out.device, b.device);
    DeviceScope ds(b.device);
    if (ds.err != cudaSuccess) return runtime_fail(ds.err, "selecting the device");
    const BlockHeader &h = b.h;
    const BlockGeometry &g = b.g;
    const RopeCS *fwd = nullptr, *inv = nullptr;
    if (h.rope_mode == NQ_ROPE_REMOVE) {
        int64_t maxp = b.max_position;
        if (maxp < 0 && g.pos_rows == 0) maxp = (int64_t)h.first_position + h.tokens_kept - 1;
        if (maxp < 0) return fail(NQ_ERR_INTERNAL, "device block without a known position range");
        NQ_TRY(rope_tables_for(ctx, b.device, maxp, h, &fwd, &inv));
    }
    DecodeLaunch *L = static_cast<DecodeLaunch *>(ctx->mem.alloc(sizeof(DecodeLaunch), 64));
    if (!L) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating %zu bytes of launch parameters failed", sizeof(DecodeLaunch));
    struct Free {
        const MemoryHooks &m;
        void *p;
        ~Free() { m.release(p); }
    } free_l{ctx->mem, L};
    std::memset(L, 0, sizeof *L);
    DecodeParams &p = L->a.p;
    p.src = b.data;
    p.k = out.k;
    p.v = out.v;
    p.kl = to_layout(out.k_layout, nullptr);
    p.vl = to_layout(out.v_layout, nullptr);
    p.rope = fwd;
    for (int s = 0; s < kNumSections; ++s) p.off[s] = g.offset[s];
    p.off[kNumSections] = g.total;
    p.H = h.num_heads;
    p.D = h.head_dim;
    p.K = h.tokens_kept;
    p.s_end = h.fp16_sinks;
    p.w_begin = h.tokens_kept - h.fp16_window;
    p.coded = g.coded;
    p.raw = g.raw;
    p.pos_rows = g.pos_rows;
    p.pos_bytes = g.pos_bytes;
    p.first_position = (uint32_t)h.first_position;
    p.dtype = (uint32_t)out.dtype;
    p.codec = h.codec;
    p.k_bits = h.k_bits;
    p.v_bits = h.v_bits;
    p.rotate = h.rope_mode == NQ_ROPE_REMOVE ? 1u : 0u;
    p.pairing = h.rope_pairing;
    p.rotary_dims = h.rotary_dims;
    p.key_mean = (h.flags & kFlagKeyMean) ? 1u : 0u;

    const uint32_t total = end - begin;
    if (2ull * h.num_heads * total >= (1ull << 32))
        return fail(NQ_ERR_UNSUPPORTED, "decoding %u heads x %u tokens at once: split the range", (unsigned)h.num_heads,
                    total);
    const bool kp = out.k_layout.kind == NQ_LAYOUT_PAGED, vp = out.v_layout.kind == NQ_LAYOUT_PAGED;
    uint32_t chunk = total;
    if (kp || vp) {
        uint32_t minp = UINT32_MAX;
        if (kp) minp = std::min(minp, out.k_layout.page_size);
        if (vp) minp = std::min(minp, out.v_layout.page_size);
        const uint64_t c = (uint64_t)(kDecodePages - 1) * minp;
        chunk = (uint32_t)std::min<uint64_t>(c, total);
    }
    for (uint32_t o0 = 0; o0 < total; o0 += chunk) {
        const uint32_t count = std::min(chunk, total - o0);
        p.begin = begin + o0;
        p.out_begin = o0;
        p.count = count;
        if (kp) {
            const uint32_t P = out.k_layout.page_size, first = o0 / P, last = (o0 + count - 1) / P;
            L->a.k_page_base = first;
            for (uint32_t i = first; i <= last; ++i) L->kpages[i - first] = out.k_layout.page_table[i];
        }
        if (vp) {
            const uint32_t P = out.v_layout.page_size, first = o0 / P, last = (o0 + count - 1) / P;
            L->a.v_page_base = first;
            for (uint32_t i = first; i <= last; ++i) L->vpages[i - first] = out.v_layout.page_table[i];
        }
        cudaError_t e = run_decode(b.device, *L, stream);
        if (e != cudaSuccess) return runtime_fail(e, "launching the decode kernel");
    }
    return NQ_OK;
}

namespace gpu {

cudaError_t upload(void *dst_device, const void *src_host, size_t n, cudaStream_t stream) {
    const uint8_t *src = static_cast<const uint8_t *>(src_host);
    uint8_t *dst = static_cast<uint8_t *>(dst_device);
    UploadChunk c;
    for (size_t o = 0; o < n; o += sizeof c.data) {
        const size_t m = std::min(sizeof c.data, n - o);
        c.dst = dst + o;
        c.n = (uint32_t)m;
        c.reserved = 0;
        std::memcpy(c.data, src + o, m);
        auto k = upload_kernel;
#if defined(NQ_GPU_SIM)
        NQ_LAUNCH(k, dim3(1), dim3(32), stream, c);
#else
        NQ_LAUNCH(k, dim3(1), dim3(256), stream, c);
#endif
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}

}  // namespace gpu
}  // namespace nq
