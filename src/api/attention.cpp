// nq_attention_*: validation of the public descriptor, its resolution into the
// AttentionCall every backend reads, the choice of splits, scratch, and the host merge.
#include <cinttypes>
#include <cmath>
#include <cstdlib>

#include "../attention/attention.h"
#include "../backend.h"
#include "internal.h"
#include "../core/hadamard.h"
#include "fp_env.h"

namespace nq {

namespace {

constexpr uint32_t kMaxQTokens = 64;
constexpr uint32_t kMaxSplits = 256;

// Device memory of a backend this library holds.
bool gpu_memory(nq_memory m) { return m != NQ_MEMORY_HOST && backend_for(m) != nullptr; }

// True when (s, i, h, d) -> s*ss + i*st + h*sh + d never maps two elements to one
// (sorted by |stride|, each exceeds the span of the smaller ones) and stays in int64.
bool strides_injective(int64_t ss, uint64_t ns, int64_t st, uint64_t nt, int64_t sh, uint64_t nh, uint64_t nd) {
    struct A {
        uint64_t s, n;
    } ax[4] = {{(uint64_t)std::llabs(ss), ns}, {(uint64_t)std::llabs(st), nt}, {(uint64_t)std::llabs(sh), nh}, {1, nd}};
    for (int i = 1; i < 4; ++i)
        for (int j = i; j > 0 && ax[j].s < ax[j - 1].s; --j) std::swap(ax[j], ax[j - 1]);
    uint64_t span = 0;
    for (const A &a : ax) {
        if (a.n <= 1) continue;
        if (a.s == 0 || a.s <= span) return false;
        if (a.s > (uint64_t)INT64_MAX / (a.n - 1)) return false;
        const uint64_t add = a.s * (a.n - 1);
        if (span > (uint64_t)INT64_MAX - add) return false;
        span += add;
    }
    return true;
}

nq_status check_image(const nq_context *ctx, const void *image, uint32_t s, uint32_t index) {
    if (!image) return fail(NQ_ERR_INVALID_ARGUMENT, "desc.block_images[%u] (sequence %u) is NULL", index, s);
    const uint8_t *p = static_cast<const uint8_t *>(image);
    uint32_t magic;
    uint16_t version, header_bytes;
    std::memcpy(&magic, p, 4);
    std::memcpy(&version, p + 4, 2);
    std::memcpy(&header_bytes, p + 6, 2);
    if (magic != kBlockMagic)
        return fail(NQ_ERR_VERSION, "desc.block_images[%u] (sequence %u): not a resident block image (magic %08x)", index,
                    s, magic);
    if (version != kFormatVersion || header_bytes != kHeaderBytes)
        return fail(NQ_ERR_VERSION, "desc.block_images[%u] (sequence %u): format version %u, header %u bytes", index, s,
                    version, header_bytes);
    BlockHeader h;
    header_read(p, &h);
    if (const char *why = header_validate(h))
        return fail(NQ_ERR_CORRUPT, "desc.block_images[%u] (sequence %u): %s", index, s, why);
    if (block_geometry(h).total != h.total_bytes)
        return fail(NQ_ERR_CORRUPT, "desc.block_images[%u] (sequence %u): header.total_bytes does not match its geometry",
                    index, s);
    if (!shape_matches(ctx, h))
        return fail(NQ_ERR_INVALID_ARGUMENT,
                    "desc.block_images[%u] (sequence %u) has %u heads of dim %u, the context %u heads of dim %u", index,
                    s, (unsigned)h.num_heads, (unsigned)h.head_dim, ctx->cfg.num_kv_heads, ctx->cfg.head_dim);
    return NQ_OK;
}

// Splits per (sequence, KV head) when the caller leaves it to the library: enough
// pieces to give every CPU thread work, never more than 16.
uint32_t choose_splits(const nq_context *ctx, const nq_attention_desc &d) {
    if (d.num_splits) return d.num_splits;
    const BackendOps *be = backend_for(d.memory);
    return be && be->attention_splits ? be->attention_splits(ctx, d.num_seqs, ctx->cfg.num_kv_heads) : 1;
}

nq_status resolve(const nq_context *ctx, const nq_attention_desc *desc_in, AttentionCall &call, bool for_decode) {
    if (!ctx) return fail(NQ_ERR_INVALID_ARGUMENT, "ctx is NULL");
    if (!desc_in) return fail(NQ_ERR_INVALID_ARGUMENT, "desc is NULL");
    nq_attention_desc d;
    nq_attention_desc_init(&d);
    NQ_TRY(copy_sized(desc_in, &d, "nq_attention_desc"));
    if (d.reserved0 != 0) return fail(NQ_ERR_INVALID_ARGUMENT, "desc.reserved0 is %u: must be 0", d.reserved0);
    if (gpu_memory(d.memory) && backend_for(d.memory)->device_check)
        NQ_TRY(backend_for(d.memory)->device_check(d.device));
    if (d.memory != NQ_MEMORY_HOST && !gpu_memory(d.memory)) {
        if (d.memory == NQ_MEMORY_CUDA || d.memory == NQ_MEMORY_HIP)
            return fail(NQ_ERR_BACKEND_UNAVAILABLE, "desc.memory is %s, but this library was built without that backend",
                        d.memory == NQ_MEMORY_CUDA ? "CUDA" : "HIP");
        return fail(NQ_ERR_INVALID_ARGUMENT, "desc.memory is %d: not an nq_memory", (int)d.memory);
    }
    if (ctx->cfg.backend == NQ_BACKEND_CPU && d.memory != NQ_MEMORY_HOST)
        return fail(NQ_ERR_INVALID_ARGUMENT, "desc.memory is device memory but config.backend is CPU");
    const uint32_t eb = dtype_bytes(d.dtype);
    if (!eb)
        return fail(NQ_ERR_UNSUPPORTED, "desc.dtype is %d: supported are NQ_DTYPE_F16, NQ_DTYPE_BF16, NQ_DTYPE_F32",
                    (int)d.dtype);
    if (d.q_tokens < 1 || d.q_tokens > kMaxQTokens)
        return fail(NQ_ERR_INVALID_ARGUMENT, "desc.q_tokens is %u: must be 1..%u", d.q_tokens, kMaxQTokens);
    if (!(std::isfinite(d.scale) && d.scale >= 0.0f))
        return fail(NQ_ERR_INVALID_ARGUMENT, "desc.scale is %g: must be finite and >= 0 (0 = 1/sqrt(head_dim))",
                    (double)d.scale);
    if (!(std::isfinite(d.softcap) && d.softcap >= 0.0f))
        return fail(NQ_ERR_INVALID_ARGUMENT, "desc.softcap is %g: must be finite and >= 0 (0 = none)", (double)d.softcap);
    if (d.window && !d.q_positions)
        return fail(NQ_ERR_INVALID_ARGUMENT, "desc.window is %u but desc.q_positions is NULL: a window needs positions",
                    d.window);
    if (d.num_splits > kMaxSplits)
        return fail(NQ_ERR_INVALID_ARGUMENT, "desc.num_splits is %u: must be 0..%u", d.num_splits, kMaxSplits);

    const uint32_t D = ctx->cfg.head_dim, KV = ctx->cfg.num_kv_heads, QH = ctx->cfg.num_q_heads;
    const int64_t dense_head = D, dense_token = (int64_t)QH * D, dense_seq = (int64_t)d.q_tokens * QH * D;
    call.memory = d.memory;
    call.device = d.device;
    call.num_seqs = d.num_seqs;
    call.q_tokens = d.q_tokens;
    call.dtype = d.dtype;
    call.head_dim = D;
    call.num_kv_heads = KV;
    call.num_q_heads = QH;
    call.group = QH / KV;
    call.block_images = d.block_images;
    call.block_indptr = d.block_indptr;
    call.q = d.q;
    call.q_stride_seq = d.q_stride_seq ? d.q_stride_seq : dense_seq;
    call.q_stride_token = d.q_stride_token ? d.q_stride_token : dense_token;
    call.q_stride_head = d.q_stride_head ? d.q_stride_head : dense_head;
    call.out = d.out;
    call.out_stride_seq = d.out_stride_seq ? d.out_stride_seq : dense_seq;
    call.out_stride_token = d.out_stride_token ? d.out_stride_token : dense_token;
    call.out_stride_head = d.out_stride_head ? d.out_stride_head : dense_head;
    call.lse = d.lse;
    call.q_positions = d.q_positions;
    call.scale = d.scale > 0.0f ? d.scale : (float)(1.0 / std::sqrt((double)D));
    call.softcap = d.softcap;
    call.window = d.window;
    call.num_splits = choose_splits(ctx, d);

    if ((uint64_t)d.num_seqs * KV * call.num_splits > ((uint64_t)1 << 32))
        return fail(NQ_ERR_INVALID_ARGUMENT, "desc.num_seqs (%u) x KV heads x splits exceeds 2^32 work items",
                    d.num_seqs);
    // The workspace size depends on the batch shape only: no pointer is needed for it.
    if (d.num_seqs == 0 || !for_decode) return NQ_OK;
    if (!d.block_indptr) return fail(NQ_ERR_INVALID_ARGUMENT, "desc.block_indptr is NULL");
    if (!d.q) return fail(NQ_ERR_INVALID_ARGUMENT, "desc.q is NULL");
    if (!d.out) return fail(NQ_ERR_INVALID_ARGUMENT, "desc.out is NULL");
    if ((uintptr_t)d.q % eb)
        return fail(NQ_ERR_INVALID_ARGUMENT, "desc.q is not aligned to its %u-byte %s elements", eb, dtype_name(d.dtype));
    if ((uintptr_t)d.out % eb)
        return fail(NQ_ERR_INVALID_ARGUMENT, "desc.out is not aligned to its %u-byte %s elements", eb,
                    dtype_name(d.dtype));
    if ((uintptr_t)d.lse % 4) return fail(NQ_ERR_INVALID_ARGUMENT, "desc.lse is not 4-byte aligned");
    if ((uintptr_t)d.q_positions % 8) return fail(NQ_ERR_INVALID_ARGUMENT, "desc.q_positions is not 8-byte aligned");
    if ((uintptr_t)d.block_indptr % 4) return fail(NQ_ERR_INVALID_ARGUMENT, "desc.block_indptr is not 4-byte aligned");
    // Queries are only read: any strides whose offsets stay in int64 will do. Outputs
    // must not overlap.
    if (!strides_injective(call.q_stride_seq, d.num_seqs, 0, 1, 0, 1, 1) ||
        !strides_injective(call.q_stride_token, d.q_tokens, 0, 1, 0, 1, 1) ||
        !strides_injective(call.q_stride_head, QH, 0, 1, 0, 1, 1))
        return fail(NQ_ERR_INVALID_ARGUMENT,
                    "desc.q_stride_seq/q_stride_token/q_stride_head (%" PRId64 ", %" PRId64 ", %" PRId64
                    ") overflow int64",
                    call.q_stride_seq, call.q_stride_token, call.q_stride_head);
    if (!strides_injective(call.out_stride_seq, d.num_seqs, call.out_stride_token, d.q_tokens, call.out_stride_head, QH,
                           D))
        return fail(NQ_ERR_INVALID_ARGUMENT,
                    "desc.out_stride_seq/out_stride_token/out_stride_head (%" PRId64 ", %" PRId64 ", %" PRId64
                    ") make distinct outputs overlap",
                    call.out_stride_seq, call.out_stride_token, call.out_stride_head);
    if (d.memory != NQ_MEMORY_HOST) return NQ_OK;
    for (uint32_t s = 0; s < d.num_seqs; ++s)
        if (d.block_indptr[s + 1] < d.block_indptr[s])
            return fail(NQ_ERR_INVALID_ARGUMENT, "desc.block_indptr[%u] (%u) is less than block_indptr[%u] (%u)", s + 1,
                        d.block_indptr[s + 1], s, d.block_indptr[s]);
    if (d.block_indptr[d.num_seqs] > d.block_indptr[0] && !d.block_images)
        return fail(NQ_ERR_INVALID_ARGUMENT, "desc.block_images is NULL");
    for (uint32_t s = 0; s < d.num_seqs; ++s)
        for (uint32_t i = d.block_indptr[s]; i < d.block_indptr[s + 1]; ++i) NQ_TRY(check_image(ctx, d.block_images[i], s, i));
    return NQ_OK;
}

size_t workspace_bytes_for(const nq_context *ctx, const AttentionCall &call) {
    return backend_for(call.memory)->attention_workspace(ctx, call);
}

}  // namespace

}  // namespace nq

extern "C" NQ_API void nq_attention_desc_init(nq_attention_desc *desc) {
    if (!desc) return;
    std::memset(static_cast<void *>(desc), 0, sizeof *desc);
    desc->size = sizeof *desc;
    desc->memory = NQ_MEMORY_HOST;
    desc->dtype = NQ_DTYPE_F16;
    desc->q_tokens = 1;
}

extern "C" NQ_API nq_status nq_attention_workspace_size(const nq_context *ctx, const nq_attention_desc *desc,
                                                        size_t *bytes) {
    nq::clear_error();
    if (!bytes) return nq::fail(NQ_ERR_INVALID_ARGUMENT, "bytes is NULL");
    *bytes = 0;
    nq::AttentionCall call{};
    NQ_TRY(nq::resolve(ctx, desc, call, false));
    *bytes = nq::workspace_bytes_for(ctx, call);
    return NQ_OK;
}

extern "C" NQ_API nq_status nq_attention_decode(nq_context *ctx, const nq_attention_desc *desc, void *workspace,
                                                size_t workspace_bytes, void *stream) {
    nq::clear_error();
    nq::DefaultFpEnv fp_env;  // results independent of the caller's MXCSR
    nq::AttentionCall call{};
    NQ_TRY(nq::resolve(ctx, desc, call, true));
    if (call.num_seqs == 0) return NQ_OK;
    const size_t need = nq::workspace_bytes_for(ctx, call);
    if (workspace) {
        if ((uintptr_t)workspace % 64) return nq::fail(NQ_ERR_INVALID_ARGUMENT, "workspace must be 64-byte aligned");
        if (workspace_bytes < need)
            return nq::fail(NQ_ERR_BUFFER_TOO_SMALL, "workspace_bytes is %zu: this call needs %zu (nq_attention_workspace_size)",
                            workspace_bytes, need);
    }
    const nq::BackendOps *be = nq::backend_for(call.memory);
    const int32_t device = call.memory == NQ_MEMORY_HOST ? 0 : call.device;
    void *owned = nullptr;
    if (!workspace && need) {
        owned = ctx->mem.alloc(need, be->workspace_align, call.memory, device);
        if (!owned)
            return nq::fail(NQ_ERR_OUT_OF_MEMORY, "allocating %zu bytes of %s failed", need,
                            call.memory == NQ_MEMORY_HOST ? "attention scratch" : "device workspace");
        workspace = owned;
    }
    nq_status st = be->attention(ctx, call, workspace, stream);
    // Released after the work is enqueued: the allocator's free must not hand the
    // memory to other work before the stream has passed it (cudaFree waits).
    if (owned) ctx->mem.release(owned, call.memory, device);
    return st;
}

extern "C" NQ_API nq_status nq_attention_merge(float *out, float *lse, const float *out_b, const float *lse_b,
                                               size_t rows, uint32_t dim) {
    nq::clear_error();
    if (rows == 0) return NQ_OK;
    if (!out) return nq::fail(NQ_ERR_INVALID_ARGUMENT, "out is NULL");
    if (!lse) return nq::fail(NQ_ERR_INVALID_ARGUMENT, "lse is NULL");
    if (!out_b) return nq::fail(NQ_ERR_INVALID_ARGUMENT, "out_b is NULL");
    if (!lse_b) return nq::fail(NQ_ERR_INVALID_ARGUMENT, "lse_b is NULL");
    if (dim == 0) return nq::fail(NQ_ERR_INVALID_ARGUMENT, "dim is 0");
    for (size_t r = 0; r < rows; ++r) {
        const float a = lse[r], b = lse_b[r];
        if (std::isnan(a) || std::isnan(b) || a == INFINITY || b == INFINITY)
            return nq::fail(NQ_ERR_INVALID_ARGUMENT, "%s[%zu] is %g: a log-sum-exp is finite or -INFINITY",
                            std::isnan(a) || a == INFINITY ? "lse" : "lse_b", r, (double)(std::isnan(a) || a == INFINITY ? a : b));
    }
    nq::DefaultFpEnv fp_env;
    for (size_t r = 0; r < rows; ++r) {
        const float a = lse[r], b = lse_b[r];
        float *o = out + r * dim;
        const float *ob = out_b + r * dim;
        if (b == -INFINITY) continue;
        if (a == -INFINITY) {
            std::memcpy(o, ob, sizeof(float) * dim);
            lse[r] = b;
            continue;
        }
        const float m = a > b ? a : b;
        const float ea = std::exp(a - m), eb = std::exp(b - m);
        const float sum = ea + eb;
        const float wa = ea / sum, wb = eb / sum;
        for (uint32_t i = 0; i < dim; ++i) o[i] = wa * o[i] + wb * ob[i];
        lse[r] = m + std::log(sum);
    }
    return NQ_OK;
}
