// Encode and decode of a block with the SIMD kernels: tiles of W tokens of one head,
// cut into tasks over (token batches x head groups) and run on the context's threads.
// Every tile writes its own bytes of the block (or rows of the output), so the result
// is the same for any thread count and task order.
#include <alloca.h>

#include <atomic>
#include <cstring>

#include "../../src/core/rope.h"
#include "../../src/core/vector_codec.h"
#include "cpu_dispatch.h"
#include "cpu_internal.h"
#include "../../src/core/kv_access.h"
#include "thread_pool.h"

namespace nq {
namespace {

// Tasks per thread, so that uneven tasks still balance; and the least work (tiles)
// worth waking the workers for.
constexpr uint32_t kTasksPerThread = 4;
constexpr uint64_t kMinTilesForThreads = 8;

// fp16 bits with an all-ones exponent are inf or nan.
bool f16_row_finite(const uint16_t *row, uint32_t D) {
    uint32_t bad = 0;
    for (uint32_t d = 0; d < D; ++d) bad |= (row[d] & 0x7c00u) == 0x7c00u;
    return bad == 0;
}

uint32_t div_up(uint32_t a, uint32_t b) { return (a + b - 1) / b; }
uint32_t min_u(uint32_t a, uint32_t b) { return a < b ? a : b; }

size_t elem_bytes(nq_dtype dt) { return dt == NQ_DTYPE_F32 ? 4 : 2; }

template <class T> T *align64(void *p) {
    return reinterpret_cast<T *>(((uintptr_t)p + 63) & ~(uintptr_t)63);
}

// Asks for the rows of a later tile while this one is computed: the rows of one head in
// [head][token][dim] memory are one 4 KB page per tile, where the hardware prefetchers
// stop. Reads go to L2 (a tile's 128 lines at once overflow the L1 miss buffers).
inline void prefetch_row(const void *row, size_t bytes, int for_write) {
    const char *p = static_cast<const char *>(row);
    for (size_t off = 0; off < bytes; off += 64) {
        if (for_write)
            __builtin_prefetch(p + off, 1, 3);
        else
            __builtin_prefetch(p + off, 0, 2);
    }
}

// Rows whose dims are not contiguous go through a contiguous copy: the kernels read and
// write unit-stride rows only.
inline const void *gather_row(const void *row, size_t es, int64_t sd, uint32_t D, void *scratch) {
    if (sd == 1) return row;
    for (uint32_t d = 0; d < D; ++d)
        std::memcpy(static_cast<char *>(scratch) + d * es, static_cast<const char *>(row) + (int64_t)d * sd * (int64_t)es, es);
    return scratch;
}

inline void scatter_row(const void *src, size_t es, int64_t sd, uint32_t D, void *row) {
    for (uint32_t d = 0; d < D; ++d)
        std::memcpy(static_cast<char *>(row) + (int64_t)d * sd * (int64_t)es, static_cast<const char *>(src) + d * es, es);
}

// Scratch of one task, on its thread's stack (the library allocates nothing per call
// here): the kernels' tile (head_dim x W floats), the RoPE tables of a super-batch (at
// most 16 KB, or one tile's when rotary_dims is 512) and, for layouts with a dim stride,
// a tile of gathered rows. 24 KB at head_dim 128 with AVX-512; at most about 96 KB
// (head_dim 512, f32, strided dims), plus up to 32 KB of float64 sums in the key-mean
// pass of a centred block.
#define NQ_TASK_SCRATCH(bytes) align64<float>(alloca((bytes) + 64))

struct EncodeState {
    const CpuKernels *kn;
    const EncodeJob *job;
    uint32_t W, H, D, K, s_end, coded, batches;
    TaskSplit split;
    bool rope;
    uint32_t nf;
    double mscale;
    double inv_freq[kMaxHeadDim / 2];
    float k_alpha, v_alpha;
    bool centred;             // key-centred block (FORMAT.md 1.8)
    uint32_t mean_heads;      // heads per task of the key-mean pass
    std::atomic<bool> failed{false};
};

// The f16 key mean of a head (FORMAT.md 1.8) as the f32 values the reference subtracts
// and adds back.
void head_mean_f32(const uint8_t *block, const BlockGeometry &g, uint32_t hd, uint32_t D, float *out) {
    const uint8_t *m = block + g.offset[kSecKMean] + (size_t)hd * D * 2;
    for (uint32_t d = 0; d < D; ++d) {
        uint16_t bits;
        std::memcpy(&bits, m + 2 * d, 2);
        out[d] = f16_to_f32(bits);
    }
}

uint32_t token_of(const EncodeJob &job, uint32_t r, uint32_t j) {
    return job.kept ? job.kept[(size_t)r * job.h->tokens_kept + j] : j;
}

// Inverse RoPE tables of coded batch b (kept-token row r) into tc: [nf][W] cos, then sin.
void encode_tables(const EncodeState &st, uint32_t r, uint32_t b, float *tc) {
    const uint32_t j0 = st.s_end + b * st.W, n = min_u(st.W, st.coded - b * st.W);
    int64_t pos[kTileLanesMax];
    for (uint32_t w = 0; w < n; ++w) pos[w] = st.job->positions[token_of(*st.job, r, j0 + w)];
    RopeTableArgs a{st.inv_freq, st.nf, st.mscale, pos, n, true, tc, tc + (size_t)st.nf * st.W};
    st.kn->rope_tables(a);
}

// Prefetches the rows of the tile two steps after (hd, b) in a task's visiting order
// (head by head over a super-batch [sb, se), then the next super-batch).
template <class Fn>
inline void prefetch_ahead(uint32_t hd, uint32_t b, uint32_t sb, uint32_t se, uint32_t h0, uint32_t h1, uint32_t b1,
                           uint32_t S, const Fn &prefetch_tile) {
    for (int step = 0; step < 2; ++step) {
        if (++b >= se) {
            b = sb;
            if (++hd >= h1) {
                hd = h0;
                sb = se;
                if (sb >= b1) return;
                se = sb + S < b1 ? sb + S : b1;
                b = sb;
            }
        }
    }
    prefetch_tile(hd, b);
}

// Tiles of one task are visited head by head over a super-batch of up to kSuperBatch
// tiles, so every head's rows are walked in address order; RoPE tables of the
// super-batch are computed once and serve every head (when heads share positions).
uint32_t super_batch(uint32_t nf, uint32_t W) {
    if (nf == 0) return 8;
    const uint32_t s = 16384u / (nf * W * 2u * (uint32_t)sizeof(float));  // tables <= 16 KB
    return s < 1 ? 1 : (s > 8 ? 8 : s);
}

// The key tile of head hd, coded slots [jc0, jc0 + n) of kept row r (sinks before them):
// its rows (gathered into rowbuf when the layout strides dims), codec, bits, RoPE tables
// tc. The encode and the key-mean pass build it alike, so both rotate the same rows.
EncodeTile key_tile(const EncodeState &st, uint32_t hd, uint32_t r, uint32_t jc0, uint32_t n, const float *tc,
                    float *work, char *rowbuf) {
    const EncodeJob &job = *st.job;
    const BlockHeader &h = *job.h;
    const nq_kv_desc &kv = *job.kv;
    const size_t es = elem_bytes(kv.dtype), table = (size_t)st.nf * st.W;
    const int64_t ksd = layout_dim_stride(kv.k_layout);
    const uint32_t D = st.D, j0 = st.s_end + jc0;
    EncodeTile t{};
    t.lanes = n;
    t.head_dim = D;
    t.codec = h.codec;
    t.bits = h.k_bits;
    t.alpha = st.k_alpha;
    t.dtype = kv.dtype;
    for (uint32_t w = 0; w < n; ++w)
        t.rows[w] = gather_row(static_cast<const char *>(kv.k) + layout_offset(kv.k_layout, hd, token_of(job, r, j0 + w)) * (int64_t)es,
                               es, ksd, D, rowbuf + w * D * es);
    if (st.rope) t.rope = TileRope{tc, tc + table, h.rotary_dims, h.rope_pairing};
    t.work = work;
    return t;
}

void encode_task(void *vp, uint32_t task) {
    EncodeState &st = *static_cast<EncodeState *>(vp);
    if (st.failed.load(std::memory_order_relaxed)) return;
    FpEnvGuard env;
    const EncodeJob &job = *st.job;
    const BlockHeader &h = *job.h;
    const BlockGeometry &g = *job.g;
    const nq_kv_desc &kv = *job.kv;
    const uint32_t W = st.W, D = st.D, K = st.K;
    const uint32_t hg = task % st.split.head_groups, bc = task / st.split.head_groups;
    const uint32_t h0 = hg * st.split.heads_per_task, h1 = min_u(st.H, h0 + st.split.heads_per_task);
    const uint32_t b0 = bc * st.split.units_per_task, b1 = min_u(st.batches, b0 + st.split.units_per_task);
    const size_t es = elem_bytes(kv.dtype);
    const bool shared = job.kept_rows <= 1;
    const uint32_t S = super_batch(st.nf, W);
    const size_t table = (size_t)st.nf * W, tables = st.rope ? 2 * table * (shared ? S : 1) : 0;
    const int64_t ksd = layout_dim_stride(kv.k_layout), vsd = layout_dim_stride(kv.v_layout);
    const size_t gather = (ksd != 1 || vsd != 1) ? (size_t)D * W * es : 0;
    float *work = NQ_TASK_SCRATCH(((size_t)D * W + tables) * sizeof(float) + gather);
    float *tabs = work + (size_t)D * W;
    char *rowbuf = reinterpret_cast<char *>(tabs + tables);

    (void)K;
    auto token = [&](uint32_t r, uint32_t j) { return token_of(job, r, j); };
    auto make_tables = [&](uint32_t r, uint32_t b, float *tc) { encode_tables(st, r, b, tc); };
    float mean[kMaxHeadDim];
    auto prefetch_tile = [&](uint32_t hd, uint32_t b) {
        const uint32_t r = shared ? 0 : hd, j0 = st.s_end + b * W, n = min_u(W, st.coded - b * W);
        for (uint32_t w = 0; w < n; ++w) {
            const uint32_t t = token(r, j0 + w);
            prefetch_row(static_cast<const char *>(kv.k) + layout_offset(kv.k_layout, hd, t) * (int64_t)es, (size_t)D * es, 0);
            prefetch_row(static_cast<const char *>(kv.v) + layout_offset(kv.v_layout, hd, t) * (int64_t)es, (size_t)D * es, 0);
        }
    };

    for (uint32_t sb = b0; sb < b1; sb += S) {
        const uint32_t se = min_u(b1, sb + S);
        if (st.rope && shared)
            for (uint32_t b = sb; b < se; ++b) make_tables(0, b, tabs + (size_t)(b - sb) * 2 * table);
        for (uint32_t hd = h0; hd < h1; ++hd) {
            const uint32_t r = shared ? 0 : hd;
            if (st.centred) head_mean_f32(job.dst, g, hd, D, mean);
            for (uint32_t b = sb; b < se; ++b) {
                const uint32_t jc0 = b * W, n = min_u(W, st.coded - jc0), j0 = st.s_end + jc0;
                float *tc = tabs;
                if (st.rope && shared) tc = tabs + (size_t)(b - sb) * 2 * table;
                if (st.rope && !shared) make_tables(r, b, tc);
                prefetch_ahead(hd, b, sb, se, h0, h1, b1, S, prefetch_tile);
                const size_t c = (size_t)hd * g.coded + jc0;
                EncodeTile t = key_tile(st, hd, r, jc0, n, tc, work, rowbuf);
                t.scales = job.dst + g.offset[kSecKScales] + c * 2;
                t.codes = job.dst + g.offset[kSecKCodes] + c * g.k_code_bytes;
                t.mean = st.centred ? mean : nullptr;
                if (!st.kn->encode(t)) {
                    st.failed.store(true, std::memory_order_relaxed);
                    return;
                }
                t.bits = h.v_bits;
                t.alpha = st.v_alpha;
                for (uint32_t w = 0; w < n; ++w)
                    t.rows[w] = gather_row(static_cast<const char *>(kv.v) + layout_offset(kv.v_layout, hd, token(r, j0 + w)) * (int64_t)es,
                                           es, vsd, D, rowbuf + w * D * es);
                t.rope = TileRope{};
                t.mean = nullptr;  // values are never centred
                t.scales = job.dst + g.offset[kSecVScales] + c * 2;
                t.codes = job.dst + g.offset[kSecVCodes] + c * g.v_code_bytes;
                if (!st.kn->encode(t)) {
                    st.failed.store(true, std::memory_order_relaxed);
                    return;
                }
            }
        }
    }
}

// The key-mean pass of a centred block: each task takes whole heads, and each head's
// rotated keys are summed in float64 as write_key_mean sums them (runs of kKeyMeanRun
// slots, one lane after another within a tile, tiles in order; a tile never straddles
// two runs), so the sums are the reference's whatever the thread count.
// Heads of a task share the RoPE tables of a super-batch, as in encode_task.
static_assert(kKeyMeanRun % 16 == 0, "a tile (8 or 16 lanes) must never straddle two key-mean runs");
void key_mean_task(void *vp, uint32_t task) {
    EncodeState &st = *static_cast<EncodeState *>(vp);
    FpEnvGuard env;
    const EncodeJob &job = *st.job;
    const BlockGeometry &g = *job.g;
    const nq_kv_desc &kv = *job.kv;
    const uint32_t W = st.W, D = st.D;
    const uint32_t h0 = task * st.mean_heads, h1 = min_u(st.H, h0 + st.mean_heads);
    const size_t es = elem_bytes(kv.dtype);
    const bool shared = job.kept_rows <= 1;
    const uint32_t S = super_batch(st.nf, W);
    const size_t table = (size_t)st.nf * W, tables = st.rope ? 2 * table * (shared ? S : 1) : 0;
    const int64_t ksd = layout_dim_stride(kv.k_layout);
    const size_t gather = ksd != 1 ? (size_t)D * W * es : 0;
    const uint32_t DP = div_up(D, W) * W;  // the kernel adds whole chunks of W dims
    // Per head: the sum, then the current run's sum. A multiple of 8: 64-byte aligned after.
    const size_t sum_doubles = 2 * (size_t)(h1 - h0) * DP;
    double *sums = reinterpret_cast<double *>(
        NQ_TASK_SCRATCH(sum_doubles * sizeof(double) + ((size_t)D * W + tables) * sizeof(float) + gather));
    float *work = reinterpret_cast<float *>(sums + sum_doubles);
    float *tabs = work + (size_t)D * W;
    char *rowbuf = reinterpret_cast<char *>(tabs + tables);
    for (size_t i = 0; i < sum_doubles; ++i) sums[i] = 0.0;

    for (uint32_t sb = 0; sb < st.batches; sb += S) {
        const uint32_t se = min_u(st.batches, sb + S);
        if (st.rope && shared)
            for (uint32_t b = sb; b < se; ++b) encode_tables(st, 0, b, tabs + (size_t)(b - sb) * 2 * table);
        for (uint32_t hd = h0; hd < h1; ++hd) {
            const uint32_t r = shared ? 0 : hd;
            for (uint32_t b = sb; b < se; ++b) {
                const uint32_t jc0 = b * W, n = min_u(W, st.coded - jc0);
                float *tc = tabs;
                if (st.rope && shared) tc = tabs + (size_t)(b - sb) * 2 * table;
                if (st.rope && !shared) encode_tables(st, r, b, tc);
                const EncodeTile t = key_tile(st, hd, r, jc0, n, tc, work, rowbuf);
                double *sum = sums + 2 * (size_t)(hd - h0) * DP, *run = sum + DP;
                if (jc0 % kKeyMeanRun == 0)
                    for (uint32_t d = 0; d < DP; ++d) run[d] = 0.0;
                st.kn->key_sum(t, run);
                if ((jc0 + n) % kKeyMeanRun == 0 || jc0 + n == st.coded)
                    for (uint32_t d = 0; d < DP; ++d) sum[d] += run[d];
            }
        }
    }
    // write_key_mean's rounding: float64 mean -> f32 -> f16.
    for (uint32_t hd = h0; hd < h1; ++hd) {
        const double *sum = sums + 2 * (size_t)(hd - h0) * DP;
        uint8_t *mean = job.dst + g.offset[kSecKMean] + (size_t)hd * D * 2;
        for (uint32_t d = 0; d < D; ++d) {
            const uint16_t bits = key_mean_f16((float)(sum[d] / (double)st.coded));
            std::memcpy(mean + 2 * d, &bits, 2);
        }
    }
}

struct DecodeState {
    const CpuKernels *kn;
    const nq_block *blk;
    const nq_kv_desc *out;
    uint32_t W, H, D, begin, c0, c1, batches;
    TaskSplit split;
    bool rope;
    uint32_t nf;
    double mscale;
    double inv_freq[kMaxHeadDim / 2];
    bool centred;
};

void decode_task(void *vp, uint32_t task) {
    DecodeState &st = *static_cast<DecodeState *>(vp);
    FpEnvGuard env;
    const nq_block &b = *st.blk;
    const BlockHeader &h = b.h;
    const BlockGeometry &g = b.g;
    const nq_kv_desc &out = *st.out;
    const uint32_t W = st.W, D = st.D;
    const uint32_t hg = task % st.split.head_groups, bc = task / st.split.head_groups;
    const uint32_t h0 = hg * st.split.heads_per_task, h1 = min_u(st.H, h0 + st.split.heads_per_task);
    const uint32_t b0 = bc * st.split.units_per_task, b1 = min_u(st.batches, b0 + st.split.units_per_task);
    const size_t es = elem_bytes(out.dtype);
    const bool shared = g.pos_rows <= 1;
    const uint32_t S = super_batch(st.nf, W);
    const size_t table = (size_t)st.nf * W, tables = st.rope ? 2 * table * (shared ? S : 1) : 0;
    const int64_t ksd = layout_dim_stride(out.k_layout), vsd = layout_dim_stride(out.v_layout);
    const size_t scatter = (ksd != 1 || vsd != 1) ? (size_t)D * W * es : 0;
    float *work = NQ_TASK_SCRATCH(((size_t)D * W + tables) * sizeof(float) + scatter);
    float *tabs = work + (size_t)D * W;
    char *rowbuf = reinterpret_cast<char *>(tabs + tables);
    const uint32_t s_end = h.fp16_sinks;
    float mean[kMaxHeadDim];

    auto make_tables = [&](uint32_t head, uint32_t bt, float *tc) {
        const uint32_t j0 = st.c0 + bt * W, n = min_u(W, st.c1 - j0);
        int64_t pos[kTileLanesMax];
        for (uint32_t w = 0; w < n; ++w) pos[w] = block_position(b, head, j0 + w);
        RopeTableArgs a{st.inv_freq, st.nf, st.mscale, pos, n, false, tc, tc + table};
        st.kn->rope_tables(a);
    };
    auto out_row = [&](void *base, const nq_layout &l, uint32_t hd, uint32_t j) {
        return static_cast<char *>(base) + layout_offset(l, hd, j - st.begin) * (int64_t)es;
    };
    auto prefetch_tile = [&](uint32_t hd, uint32_t bt) {
        const uint32_t j0 = st.c0 + bt * W, n = min_u(W, st.c1 - j0);
        for (uint32_t w = 0; w < n; ++w) {
            prefetch_row(out_row(out.k, out.k_layout, hd, j0 + w), (size_t)D * es, 1);
            prefetch_row(out_row(out.v, out.v_layout, hd, j0 + w), (size_t)D * es, 1);
        }
    };

    for (uint32_t sb = b0; sb < b1; sb += S) {
        const uint32_t se = min_u(b1, sb + S);
        if (st.rope && shared)
            for (uint32_t bt = sb; bt < se; ++bt) make_tables(0, bt, tabs + (size_t)(bt - sb) * 2 * table);
        for (uint32_t hd = h0; hd < h1; ++hd) {
            if (st.centred) head_mean_f32(b.data, g, hd, D, mean);
            for (uint32_t bt = sb; bt < se; ++bt) {
                const uint32_t j0 = st.c0 + bt * W, n = min_u(W, st.c1 - j0), jc0 = j0 - s_end;
                float *tc = tabs;
                if (st.rope && shared) tc = tabs + (size_t)(bt - sb) * 2 * table;
                if (st.rope && !shared) make_tables(hd, bt, tc);
                prefetch_ahead(hd, bt, sb, se, h0, h1, b1, S, prefetch_tile);
                const size_t c = (size_t)hd * g.coded + jc0;
                DecodeTile t{};
                t.lanes = n;
                t.head_dim = D;
                t.codec = h.codec;
                t.bits = h.k_bits;
                t.scales = b.data + g.offset[kSecKScales] + c * 2;
                t.codes = b.data + g.offset[kSecKCodes] + c * g.k_code_bytes;
                if (st.rope) t.rope = TileRope{tc, tc + table, h.rotary_dims, h.rope_pairing};
                t.dtype = out.dtype;
                t.work = work;
                t.mean = st.centred ? mean : nullptr;
                for (uint32_t w = 0; w < n; ++w)
                    t.rows[w] = ksd == 1 ? out_row(out.k, out.k_layout, hd, j0 + w) : rowbuf + w * D * es;
                st.kn->decode(t);
                if (ksd != 1)
                    for (uint32_t w = 0; w < n; ++w)
                        scatter_row(t.rows[w], es, ksd, D, out_row(out.k, out.k_layout, hd, j0 + w));
                t.bits = h.v_bits;
                t.scales = b.data + g.offset[kSecVScales] + c * 2;
                t.codes = b.data + g.offset[kSecVCodes] + c * g.v_code_bytes;
                t.rope = TileRope{};
                t.mean = nullptr;
                for (uint32_t w = 0; w < n; ++w)
                    t.rows[w] = vsd == 1 ? out_row(out.v, out.v_layout, hd, j0 + w) : rowbuf + w * D * es;
                st.kn->decode(t);
                if (vsd != 1)
                    for (uint32_t w = 0; w < n; ++w)
                        scatter_row(t.rows[w], es, vsd, D, out_row(out.v, out.v_layout, hd, j0 + w));
            }
        }
    }
}

}  // namespace

TaskSplit split_tasks(uint32_t units, uint32_t heads, uint32_t threads) {
    TaskSplit s{units, heads, 1, units ? 1u : 0u};
    if (threads <= 1 || (uint64_t)units * heads < kMinTilesForThreads) return s;
    const uint32_t target = threads * kTasksPerThread;
    s.units_per_task = div_up(units, target);
    const uint32_t chunks = div_up(units, s.units_per_task);
    if (chunks < target) {
        s.heads_per_task = div_up(heads, min_u(heads, div_up(target, chunks)));
        s.head_groups = div_up(heads, s.heads_per_task);
    }
    s.tasks = chunks * s.head_groups;
    return s;
}

// How many heads one task of the key-mean pass takes: the heads of a task share RoPE
// tables; at most kMeanHeadsPerTask, for the float64 sums on the task's stack.
constexpr uint32_t kMeanHeadsPerTask = 8;

nq_status encode_tiled(const nq_context *ctx, const CpuKernels &kn, const EncodeJob &job) {
    const BlockHeader &h = *job.h;
    const BlockGeometry &g = *job.g;
    const nq_kv_desc &kv = *job.kv;
    const uint32_t H = h.num_heads, D = h.head_dim, K = h.tokens_kept;
    const uint32_t s_end = h.fp16_sinks, w_begin = K - h.fp16_window;
    const uint32_t threads = thread_pool_size(cpu_pool(ctx));
    write_positions(job);

    EncodeState st;
    st.kn = &kn;
    st.job = &job;
    st.W = kn.lanes;
    st.H = H;
    st.D = D;
    st.K = K;
    st.s_end = s_end;
    st.coded = g.coded;
    st.batches = div_up(g.coded, st.W);
    st.split = split_tasks(st.batches, H, threads);
    st.rope = h.rope_mode == NQ_ROPE_REMOVE;
    st.nf = st.rope ? h.rotary_dims / 2u : 0u;
    st.mscale = 1.0;
    if (st.rope) block_rope_freqs(h, st.inv_freq, &st.mscale);
    st.k_alpha = codec_alpha(h.codec, h.k_bits);
    st.v_alpha = codec_alpha(h.codec, h.v_bits);
    st.centred = (h.flags & kFlagKeyMean) != 0;

    // The key mean first (the reference's order: a non-finite row found later falls
    // back to encode_rows_reference, which reads it). No coded token: zeros.
    if (st.centred) {
        if (g.coded == 0) {
            std::memset(job.dst + g.offset[kSecKMean], 0, (size_t)H * D * 2);
        } else {
            const bool many = (uint64_t)st.batches * H >= kMinTilesForThreads;
            st.mean_heads = min_u(kMeanHeadsPerTask, many ? div_up(H, threads) : H);
            thread_pool_run(many ? cpu_pool(ctx) : nullptr, div_up(H, st.mean_heads), key_mean_task, &st);
        }
    }

    // Raw (fp16) rows: the sinks and the recent window, few; on the calling thread.
    const size_t es = elem_bytes(kv.dtype);
    for (uint32_t slot = 0; slot < g.raw; ++slot) {
        const uint32_t j = slot < s_end ? slot : w_begin + (slot - s_end);
        for (uint32_t hd = 0; hd < H; ++hd) {
            const uint32_t r = job.kept_rows > 1 ? hd : 0;
            const uint32_t t = job.kept ? job.kept[(size_t)r * K + j] : j;
            const size_t off = ((size_t)hd * g.raw + slot) * D * 2;
            uint16_t *kr = reinterpret_cast<uint16_t *>(job.dst + g.offset[kSecKRaw] + off);
            uint16_t *vr = reinterpret_cast<uint16_t *>(job.dst + g.offset[kSecVRaw] + off);
            kn.row_to_f16(static_cast<const char *>(kv.k) + layout_offset(kv.k_layout, hd, t) * (int64_t)es, kv.dtype,
                          layout_dim_stride(kv.k_layout), D, kr);
            // A non-finite row: the reference names the first one in token order.
            if (!f16_row_finite(kr, D)) return encode_rows_reference(job, 0, K);
            kn.row_to_f16(static_cast<const char *>(kv.v) + layout_offset(kv.v_layout, hd, t) * (int64_t)es, kv.dtype,
                          layout_dim_stride(kv.v_layout), D, vr);
            if (!f16_row_finite(vr, D)) return encode_rows_reference(job, 0, K);
        }
    }
    if (g.coded == 0) return NQ_OK;

    thread_pool_run(cpu_pool(ctx), st.split.tasks, encode_task, &st);
    // A non-finite vector: the reference finds the first one in its order and names it.
    if (st.failed.load()) return encode_rows_reference(job, 0, K);
    return NQ_OK;
}

nq_status decode_tiled(const nq_context *ctx, const CpuKernels &kn, const nq_block &b, uint32_t begin, uint32_t end,
                       const nq_kv_desc &out) {
    const BlockHeader &h = b.h;
    const BlockGeometry &g = b.g;
    const uint32_t H = h.num_heads, D = h.head_dim, K = h.tokens_kept;
    const uint32_t s_end = h.fp16_sinks, w_begin = K - h.fp16_window;
    const size_t es = elem_bytes(out.dtype);
    for (uint32_t j = begin; j < end; ++j) {
        if (j >= s_end && j < w_begin) {
            j = w_begin - 1;  // skip the coded rows
            continue;
        }
        const uint32_t slot = j < s_end ? j : s_end + (j - w_begin);
        for (uint32_t hd = 0; hd < H; ++hd) {
            const size_t off = ((size_t)hd * g.raw + slot) * D * 2;
            kn.f16_to_row(reinterpret_cast<const uint16_t *>(b.data + g.offset[kSecKRaw] + off), D,
                          static_cast<char *>(out.k) + layout_offset(out.k_layout, hd, j - begin) * (int64_t)es, out.dtype,
                          layout_dim_stride(out.k_layout));
            kn.f16_to_row(reinterpret_cast<const uint16_t *>(b.data + g.offset[kSecVRaw] + off), D,
                          static_cast<char *>(out.v) + layout_offset(out.v_layout, hd, j - begin) * (int64_t)es, out.dtype,
                          layout_dim_stride(out.v_layout));
        }
    }
    const uint32_t c0 = begin > s_end ? begin : s_end, c1 = end < w_begin ? end : w_begin;
    if (c0 >= c1) return NQ_OK;

    DecodeState st;
    st.kn = &kn;
    st.blk = &b;
    st.out = &out;
    st.W = kn.lanes;
    st.H = H;
    st.D = D;
    st.begin = begin;
    st.c0 = c0;
    st.c1 = c1;
    st.batches = div_up(c1 - c0, st.W);
    st.split = split_tasks(st.batches, H, thread_pool_size(cpu_pool(ctx)));
    st.rope = h.rope_mode == NQ_ROPE_REMOVE;
    st.nf = st.rope ? h.rotary_dims / 2u : 0u;
    st.mscale = 1.0;
    if (st.rope) block_rope_freqs(h, st.inv_freq, &st.mscale);
    st.centred = (h.flags & kFlagKeyMean) != 0;
    thread_pool_run(cpu_pool(ctx), st.split.tasks, decode_task, &st);
    return NQ_OK;
}

}  // namespace nq
