// The scalar reference of the quantisation pipeline: every other backend and ISA must
// reproduce the bytes this file writes. The entry points route to the SIMD kernels of
// the context's instruction set (cpu_tiles.cpp) when it has one.
#include <atomic>
#include <cstring>

#include "../../src/backend.h"
#include "../../src/core/vector_codec.h"
#include "../../src/format/block_rope.h"
#include "cpu_dispatch.h"
#include "cpu_internal.h"
#include "../../src/core/kv_access.h"
#include "thread_pool.h"

namespace nq {

nq_status cpu_scores(const nq_context *ctx, const nq_kv_desc &kv, const nq_score_desc *sc, const int64_t *positions,
                     float *out, Workspace &ws);

namespace {

// RoPE angles of one position, recomputed only when the position changes.
struct RopeCache {
    double inv_freq[kMaxHeadDim / 2];
    double mscale = 1.0;
    uint32_t nf = 0;
    int64_t pos = -1;
    float c_fwd[kMaxHeadDim / 2], s_fwd[kMaxHeadDim / 2], c_inv[kMaxHeadDim / 2], s_inv[kMaxHeadDim / 2];

    void init(const BlockHeader &h) {
        block_rope_freqs(h, inv_freq, &mscale);
        nf = h.rotary_dims / 2;
    }
    void at(int64_t p) {
        if (p == pos) return;
        rope_tables(inv_freq, nf, mscale, p, c_fwd, s_fwd, c_inv, s_inv);
        pos = p;
    }
};

void put_u16(uint8_t *dst, uint16_t v) { std::memcpy(dst, &v, 2); }
uint16_t get_u16(const uint8_t *src) {
    uint16_t v;
    std::memcpy(&v, src, 2);
    return v;
}

// Stores a row as fp16; false if any element is inf/nan or rounds to inf (beyond
// fp16's 65504), which the block could not give back.
bool store_raw(uint8_t *dst, const float *row, uint32_t D) {
    bool finite = true;
    for (uint32_t d = 0; d < D; ++d) {
        const uint16_t h = f32_to_f16(row[d]);
        finite &= (h & 0x7c00u) != 0x7c00u;
        put_u16(dst + 2 * d, h);
    }
    return finite;
}

// `mean` (fp16 bits, FORMAT.md 1.8) is subtracted after the rotation when given.
bool encode_vector(float *row, uint32_t D, int codec, int bits, uint8_t *scale_dst, uint8_t *code_dst,
                   const uint8_t *mean = nullptr) {
    hadamard_forward(row, D);
    if (mean)
        for (uint32_t d = 0; d < D; ++d) row[d] = row[d] - f16_to_f32(get_u16(mean + 2 * d));
    uint16_t s;
    if (!vector_scale(row, D, codec, bits, &s)) return false;
    put_u16(scale_dst, s);
    encode_rotated(row, D, codec, bits, s, code_dst);
    return true;
}

}  // namespace

// One message shape for every non-finite input row, whether it is quantised or kept
// as fp16 (a sink or a token of the fp16 window).
nq_status raw_row_error(const char *which, uint32_t head, uint32_t token) {
    return fail(NQ_ERR_INVALID_ARGUMENT,
                "%s: head %u token %u holds inf/nan or a value beyond fp16's range (the token is kept as fp16)", which,
                head, token);
}

nq_status coded_row_error(const char *which, uint32_t head, uint32_t token) {
    return fail(NQ_ERR_INVALID_ARGUMENT,
                "%s: head %u token %u holds inf/nan or a value too large to quantise (the token is quantised)", which,
                head, token);
}

void block_rope_freqs(const BlockHeader &h, double *inv_freq, double *mscale) {
    rope_inv_freq(header_rope(h), h.rope_seq_len, inv_freq, mscale);
}

void write_positions(const EncodeJob &job) {
    const BlockHeader &h = *job.h;
    const BlockGeometry &g = *job.g;
    const uint32_t K = h.tokens_kept;
    uint8_t *dst = job.dst;
    if (g.pos_rows) {
        uint8_t *p = dst + g.offset[kSecPositions];
        for (uint32_t r = 0; r < g.pos_rows; ++r)
            for (uint32_t j = 0; j < K; ++j) {
                uint32_t t = job.kept ? job.kept[(size_t)r * K + j] : j;
                uint32_t off = (uint32_t)(job.positions[t] - (int64_t)h.first_position);
                uint8_t *e = p + ((size_t)r * K + j) * g.pos_bytes;
                if (g.pos_bytes == 2) {
                    uint16_t o16 = (uint16_t)off;
                    std::memcpy(e, &o16, 2);
                } else {
                    std::memcpy(e, &off, 4);
                }
            }
    }
}

// The key mean of every head (FORMAT.md 1.8) into the k_mean section: the rotated keys
// of the coded slots summed in float64, in runs of kKeyMeanRun slots (slot order within
// a run, the run sums in run order). Runs before any key is coded.
// (The SIMD driver's key_mean_task computes the same bits with the kernels' rotation.)
void write_key_mean(const EncodeJob &job) {
    const BlockHeader &h = *job.h;
    const BlockGeometry &g = *job.g;
    const nq_kv_desc &kv = *job.kv;
    const uint32_t H = h.num_heads, D = h.head_dim, K = h.tokens_kept;
    const uint32_t s_end = h.fp16_sinks;
    uint8_t *mean = job.dst + g.offset[kSecKMean];
    RopeCache rope;
    const bool unrotate = h.rope_mode == NQ_ROPE_REMOVE;
    if (unrotate) rope.init(h);
    float row[kMaxHeadDim];
    double sum[kMaxHeadDim], run[kMaxHeadDim];
    for (uint32_t hd = 0; hd < H; ++hd) {
        const uint32_t r = job.kept_rows > 1 ? hd : 0;
        for (uint32_t d = 0; d < D; ++d) sum[d] = 0.0;
        for (uint32_t c = 0; c < g.coded; ++c) {
            if (c % kKeyMeanRun == 0)
                for (uint32_t d = 0; d < D; ++d) run[d] = 0.0;
            const uint32_t j = s_end + c;
            const uint32_t t = job.kept ? job.kept[(size_t)r * K + j] : j;
            load_row(kv.k, kv.dtype, kv.k_layout, hd, t, D, row);
            if (unrotate) {
                rope.at(job.positions[t]);
                rope_unrotate(row, h.rope_pairing, h.rotary_dims, rope.c_inv, rope.s_inv);
            }
            hadamard_forward(row, D);
            for (uint32_t d = 0; d < D; ++d) run[d] += (double)row[d];
            if ((c + 1) % kKeyMeanRun == 0 || c + 1 == g.coded)
                for (uint32_t d = 0; d < D; ++d) sum[d] += run[d];
        }
        for (uint32_t d = 0; d < D; ++d) {
            const float m = g.coded ? (float)(sum[d] / (double)g.coded) : 0.0f;
            put_u16(mean + ((size_t)hd * D + d) * 2, key_mean_f16(m));
        }
    }
}

nq_status encode_rows_reference(const EncodeJob &job, uint32_t j_begin, uint32_t j_end) {
    const BlockHeader &h = *job.h;
    const BlockGeometry &g = *job.g;
    const nq_kv_desc &kv = *job.kv;
    const uint32_t H = h.num_heads, D = h.head_dim, K = h.tokens_kept;
    const uint32_t s_end = h.fp16_sinks, w_begin = K - h.fp16_window;
    uint8_t *dst = job.dst;
    RopeCache rope;
    const bool unrotate = h.rope_mode == NQ_ROPE_REMOVE;
    if (unrotate) rope.init(h);
    const bool centred = (h.flags & kFlagKeyMean) != 0;

    float row[kMaxHeadDim];
    // Token-major order so that one RoPE table serves every head when rows are shared.
    for (uint32_t j = j_begin; j < j_end; ++j) {
        for (uint32_t hd = 0; hd < H; ++hd) {
            const uint32_t r = job.kept_rows > 1 ? hd : 0;
            const uint32_t t = job.kept ? job.kept[(size_t)r * K + j] : j;
            const bool raw = j < s_end || j >= w_begin;
            if (raw) {
                const uint32_t slot = j < s_end ? j : s_end + (j - w_begin);
                const size_t off = ((size_t)hd * g.raw + slot) * D * 2;
                load_row(kv.k, kv.dtype, kv.k_layout, hd, t, D, row);
                if (!store_raw(dst + g.offset[kSecKRaw] + off, row, D)) return raw_row_error("kv.k", hd, t);
                load_row(kv.v, kv.dtype, kv.v_layout, hd, t, D, row);
                if (!store_raw(dst + g.offset[kSecVRaw] + off, row, D)) return raw_row_error("kv.v", hd, t);
                continue;
            }
            const size_t c = (size_t)hd * g.coded + (j - s_end);
            load_row(kv.k, kv.dtype, kv.k_layout, hd, t, D, row);
            if (unrotate) {
                rope.at(job.positions[t]);
                rope_unrotate(row, h.rope_pairing, h.rotary_dims, rope.c_inv, rope.s_inv);
            }
            if (!encode_vector(row, D, h.codec, h.k_bits, dst + g.offset[kSecKScales] + c * 2,
                               dst + g.offset[kSecKCodes] + c * g.k_code_bytes,
                               centred ? dst + g.offset[kSecKMean] + (size_t)hd * D * 2 : nullptr))
                return coded_row_error("kv.k", hd, t);
            load_row(kv.v, kv.dtype, kv.v_layout, hd, t, D, row);
            if (!encode_vector(row, D, h.codec, h.v_bits, dst + g.offset[kSecVScales] + c * 2,
                               dst + g.offset[kSecVCodes] + c * g.v_code_bytes))
                return coded_row_error("kv.v", hd, t);
        }
    }
    return NQ_OK;
}

namespace {

// Token ranges of the reference loops as tasks of the context's pool.
struct RowTasks {
    const EncodeJob *job;
    const nq_block *blk;
    uint32_t begin, end;  // decode
    const nq_kv_desc *out;
    uint32_t j_begin, j_end, per_task;
    std::atomic<bool> failed{false};
};

void encode_rows_task(void *vp, uint32_t i) {
    RowTasks &t = *static_cast<RowTasks *>(vp);
    FpEnvGuard env;
    const uint32_t j0 = t.j_begin + i * t.per_task, j1 = j0 + t.per_task < t.j_end ? j0 + t.per_task : t.j_end;
    if (encode_rows_reference(*t.job, j0, j1) != NQ_OK) t.failed.store(true);
}

void decode_rows_task(void *vp, uint32_t i) {
    RowTasks &t = *static_cast<RowTasks *>(vp);
    FpEnvGuard env;
    const uint32_t j0 = t.j_begin + i * t.per_task, j1 = j0 + t.per_task < t.j_end ? j0 + t.per_task : t.j_end;
    decode_rows_reference(*t.blk, t.begin, *t.out, j0, j1);
}

}  // namespace

nq_status cpu_encode(const nq_context *ctx, const EncodeJob &job, void *) {
    FpEnvGuard env;
    if (const CpuKernels *kn = cpu_kernels(cpu_isa(ctx))) return encode_tiled(ctx, *kn, job);
    const bool centred = (job.h->flags & kFlagKeyMean) != 0;
    write_positions(job);
    if (centred) write_key_mean(job);
    const uint32_t K = job.h->tokens_kept;
    const TaskSplit sp = split_tasks(K, 1, thread_pool_size(cpu_pool(ctx)));
    if (sp.tasks <= 1) return encode_rows_reference(job, 0, K);
    RowTasks t{&job, nullptr, 0, 0, nullptr, 0, K, sp.units_per_task};
    thread_pool_run(cpu_pool(ctx), sp.tasks, encode_rows_task, &t);
    // The first failure in token order, with its message, on this thread.
    if (t.failed.load()) return encode_rows_reference(job, 0, K);
    return NQ_OK;
}

int64_t block_position(const nq_block &b, uint32_t head, uint32_t j) {
    if (b.g.pos_rows == 0) return (int64_t)b.h.first_position + j;
    const uint32_t r = b.g.pos_rows > 1 ? head : 0;
    const uint8_t *e = b.data + b.g.offset[kSecPositions] + ((size_t)r * b.h.tokens_kept + j) * b.g.pos_bytes;
    uint32_t off;
    if (b.g.pos_bytes == 2) {
        uint16_t o16;
        std::memcpy(&o16, e, 2);
        off = o16;
    } else {
        std::memcpy(&off, e, 4);
    }
    return (int64_t)b.h.first_position + off;
}

void decode_rows_reference(const nq_block &b, uint32_t begin, const nq_kv_desc &out, uint32_t j_begin,
                           uint32_t j_end) {
    const BlockHeader &h = b.h;
    const BlockGeometry &g = b.g;
    const uint32_t H = h.num_heads, D = h.head_dim, K = h.tokens_kept;
    const uint32_t s_end = h.fp16_sinks, w_begin = K - h.fp16_window;
    const uint8_t *src = b.data;
    RopeCache rope;
    const bool rotate = h.rope_mode == NQ_ROPE_REMOVE;
    if (rotate) rope.init(h);
    const bool centred = (h.flags & kFlagKeyMean) != 0;
    float row[kMaxHeadDim];
    for (uint32_t j = j_begin; j < j_end; ++j) {
        for (uint32_t hd = 0; hd < H; ++hd) {
            const uint32_t o = j - begin;
            if (j < s_end || j >= w_begin) {
                const uint32_t slot = j < s_end ? j : s_end + (j - w_begin);
                const size_t off = ((size_t)hd * g.raw + slot) * D * 2;
                for (uint32_t d = 0; d < D; ++d) row[d] = f16_to_f32(get_u16(src + g.offset[kSecKRaw] + off + 2 * d));
                store_row(out.k, out.dtype, out.k_layout, hd, o, D, row);
                for (uint32_t d = 0; d < D; ++d) row[d] = f16_to_f32(get_u16(src + g.offset[kSecVRaw] + off + 2 * d));
                store_row(out.v, out.dtype, out.v_layout, hd, o, D, row);
                continue;
            }
            const size_t c = (size_t)hd * g.coded + (j - s_end);
            decode_rotated(src + g.offset[kSecKCodes] + c * g.k_code_bytes, D, h.codec, h.k_bits,
                           get_u16(src + g.offset[kSecKScales] + c * 2), row);
            if (centred) {
                const uint8_t *mean = src + g.offset[kSecKMean] + (size_t)hd * D * 2;
                for (uint32_t d = 0; d < D; ++d) row[d] = row[d] + f16_to_f32(get_u16(mean + 2 * d));
            }
            hadamard_inverse(row, D);
            if (rotate) {
                rope.at(block_position(b, hd, j));
                rope_rotate(row, h.rope_pairing, h.rotary_dims, rope.c_fwd, rope.s_fwd);
            }
            store_row(out.k, out.dtype, out.k_layout, hd, o, D, row);
            decode_rotated(src + g.offset[kSecVCodes] + c * g.v_code_bytes, D, h.codec, h.v_bits,
                           get_u16(src + g.offset[kSecVScales] + c * 2), row);
            hadamard_inverse(row, D);
            store_row(out.v, out.dtype, out.v_layout, hd, o, D, row);
        }
    }
}

nq_status cpu_decode(const nq_context *ctx, const nq_block &b, uint32_t begin, uint32_t end, const nq_kv_desc &out,
                     void *) {
    FpEnvGuard env;
    if (const CpuKernels *kn = cpu_kernels(cpu_isa(ctx))) return decode_tiled(ctx, *kn, b, begin, end, out);
    const TaskSplit sp = split_tasks(end - begin, 1, thread_pool_size(cpu_pool(ctx)));
    if (sp.tasks <= 1) {
        decode_rows_reference(b, begin, out, begin, end);
        return NQ_OK;
    }
    RowTasks t{nullptr, &b, begin, end, &out, begin, end, sp.units_per_task};
    thread_pool_run(cpu_pool(ctx), sp.tasks, decode_rows_task, &t);
    return NQ_OK;
}

nq_status cpu_scores_guarded(const nq_context *ctx, const nq_kv_desc &kv, const nq_score_desc *sc,
                             const int64_t *positions, float *out, Workspace &ws) {
    FpEnvGuard env;
    return cpu_scores(ctx, kv, sc, positions, out, ws);
}

}  // namespace nq
