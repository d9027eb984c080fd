// C helpers of the cgo binding.
#include "shim.h"

nq_status nqgo_context_create(nq_config cfg, const nq_layer_override *ov, uint32_t n, nq_context **out) {
    cfg.overrides = ov;
    cfg.num_overrides = n;
    return nq_context_create(&cfg, out);
}

static void nqgo_fill(nq_kv_desc *kv, void *k, void *v, const int32_t *kpt, const int32_t *vpt, const int64_t *pos) {
    kv->k = k;
    kv->v = v;
    kv->k_layout.page_table = kpt;
    kv->v_layout.page_table = vpt;
    kv->positions = pos;
}

nq_status nqgo_compress(nq_context *ctx, nq_sequence *seq, int bound_only, nq_kv_desc kv, void *k, void *v,
                               const int32_t *kpt, const int32_t *vpt, const int64_t *pos, int has_scores,
                               nq_score_desc sc, const float *scores, const void *queries, const int64_t *qpos,
                               size_t *bound, nq_block **out) {
    nqgo_fill(&kv, k, v, kpt, vpt, pos);
    sc.scores = scores;
    sc.queries = queries;
    sc.query_positions = qpos;
    if (bound_only) return nq_compress_bound(ctx, &kv, bound);
    if (seq) return nq_sequence_append(seq, &kv, has_scores ? &sc : NULL, NULL);
    return nq_compress_kv(ctx, &kv, has_scores ? &sc : NULL, NULL, out);
}

nq_status nqgo_decode(nq_context *ctx, const nq_block *blk, nq_sequence *seq, uint32_t begin, uint32_t end,
                             nq_kv_desc out, void *k, void *v, const int32_t *kpt, const int32_t *vpt) {
    nqgo_fill(&out, k, v, kpt, vpt, NULL);
    if (seq) return nq_sequence_decode(seq, begin, end, &out, NULL);
    return nq_decode_block(ctx, blk, begin, end, &out, NULL);
}
