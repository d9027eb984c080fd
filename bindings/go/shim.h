// C helpers of the cgo binding (shim.c).
//
// cgo forbids passing Go memory that holds Go pointers, so descriptors travel by value
// without their pointers and the pointers to Go slices travel as separate arguments;
// these helpers put them in place on the C side, for the duration of the call only.
#ifndef NEXUSQUANT_GO_SHIM_H
#define NEXUSQUANT_GO_SHIM_H
#include <stdlib.h>
#include <nexusquant.h>

nq_status nqgo_context_create(nq_config cfg, const nq_layer_override *ov, uint32_t n, nq_context **out);
nq_status nqgo_compress(nq_context *ctx, nq_sequence *seq, int bound_only, nq_kv_desc kv, void *k, void *v,
                        const int32_t *kpt, const int32_t *vpt, const int64_t *pos, int has_scores,
                        nq_score_desc sc, const float *scores, const void *queries, const int64_t *qpos,
                        size_t *bound, nq_block **out);
nq_status nqgo_decode(nq_context *ctx, const nq_block *blk, nq_sequence *seq, uint32_t begin, uint32_t end,
                      nq_kv_desc out, void *k, void *v, const int32_t *kpt, const int32_t *vpt);

#endif
