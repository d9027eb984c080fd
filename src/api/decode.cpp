// Decoding a block or a token range of it into the engine's layout.
#include "../backend.h"
#include "internal.h"
#include "fp_env.h"

namespace nq {

nq_status decode_range(nq_context *ctx, const nq_block *blk, uint32_t begin, uint32_t end, const nq_kv_desc *out_in,
                       void *stream) {
    if (!ctx) return fail(NQ_ERR_INVALID_ARGUMENT, "ctx is NULL");
    if (!blk) return fail(NQ_ERR_INVALID_ARGUMENT, "blk is NULL");
    if (!out_in) return fail(NQ_ERR_INVALID_ARGUMENT, "out is NULL");
    nq_kv_desc out;
    nq_kv_desc_init(&out);
    NQ_TRY(copy_sized(out_in, &out, "nq_kv_desc"));
    if (begin > end || end > blk->h.tokens_kept)
        return fail(NQ_ERR_OUT_OF_RANGE, "token range [%u, %u) outside the block's %u tokens", begin, end,
                    blk->h.tokens_kept);
    if (out.num_tokens != end - begin)
        return fail(NQ_ERR_INVALID_ARGUMENT, "out.num_tokens is %u but the range [%u, %u) has %u tokens", out.num_tokens,
                    begin, end, end - begin);
    if (!shape_matches(ctx, blk->h))
        return fail(NQ_ERR_INVALID_ARGUMENT,
                    "the block has %u heads of dim %u, the context %u heads of dim %u: use a matching context",
                    (unsigned)blk->h.num_heads, (unsigned)blk->h.head_dim, ctx->cfg.num_kv_heads, ctx->cfg.head_dim);
    const BackendOps *be = backend_for(blk->memory);
    if (!be)
        return fail(NQ_ERR_BACKEND_UNAVAILABLE, "%s",
                    have_device_backend() ? "the block is in device memory of a backend this library lacks"
                                          : "the block is in device memory and this library has no GPU backend");
    if (end == begin) return NQ_OK;
    NQ_TRY(validate_kv(ctx, out, true, "out"));
    NQ_TRY(validate_outputs_disjoint(ctx, out, "out"));
    if (out.memory != blk->memory)
        return fail(NQ_ERR_INVALID_ARGUMENT,
                    "out.memory (%d) differs from the block's memory (%d): copy the block first (nq_block_copy)",
                    (int)out.memory, (int)blk->memory);
    if (ctx->cfg.backend == NQ_BACKEND_CPU && out.memory != NQ_MEMORY_HOST)
        return fail(NQ_ERR_INVALID_ARGUMENT, "out.memory is device memory but config.backend is CPU");
    if ((ctx->cfg.backend == NQ_BACKEND_CUDA || ctx->cfg.backend == NQ_BACKEND_HIP) && out.memory == NQ_MEMORY_HOST)
        return fail(NQ_ERR_INVALID_ARGUMENT, "out.memory is HOST but config.backend is a GPU backend");
    return be->decode(ctx, *blk, begin, end, out, stream);
}

}  // namespace nq

extern "C" NQ_API nq_status nq_decode_block(nq_context *ctx, const nq_block *blk, uint32_t begin, uint32_t end,
                                            const nq_kv_desc *out, void *stream) {
    nq::clear_error();
    nq::DefaultFpEnv fp_env;  // results independent of the caller's MXCSR
    return nq::decode_range(ctx, blk, begin, end, out, stream);
}

// The 0.1 name of nq_decode_block (its own symbol, so that 0.1 callers keep linking).
extern "C" NQ_API nq_status nq_decode(nq_context *ctx, const nq_block *blk, uint32_t begin, uint32_t end,
                                      const nq_kv_desc *out, void *stream) {
    return nq_decode_block(ctx, blk, begin, end, out, stream);
}
