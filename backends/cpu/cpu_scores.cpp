// Token importance on the CPU: the engine's scores, attention of observation-window
// queries, or the key-norm proxy.
#include <cmath>

#include "../../src/backend.h"
#include "../../src/core/nq_expf.h"
#include "../../src/core/vector_codec.h"
#include "../../src/core/kv_access.h"

namespace nq {

size_t score_scratch_bytes(uint32_t num_tokens) { return (size_t)num_tokens * 3 * sizeof(float) + 3 * 64; }

namespace {

void load_query(const nq_score_desc &sc, uint32_t qh, uint32_t i, uint32_t D, float *dst) {
    nq_layout l{};
    l.kind = NQ_LAYOUT_STRIDED;
    l.stride_head = sc.q_stride_head;
    l.stride_token = sc.q_stride_token;
    l.stride_dim = sc.q_stride_dim ? sc.q_stride_dim : 1;
    load_row(sc.queries, sc.query_dtype, l, qh, i, D, dst);
}

float dot(const float *a, const float *b, uint32_t n) {
    float s = 0.0f;
    for (uint32_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

}  // namespace

nq_status cpu_scores(const nq_context *ctx, const nq_kv_desc &kv, const nq_score_desc *sc, const int64_t *positions,
                     float *out, Workspace &ws) {
    const uint32_t T = kv.num_tokens, H = ctx->cfg.num_kv_heads, D = ctx->cfg.head_dim;
    float row[kMaxHeadDim];
    nq_score_kind kind = sc ? sc->kind : NQ_SCORES_KEY_NORM;
    if (kind == NQ_SCORES_GIVEN) {
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t t = 0; t < T; ++t)
                out[(size_t)h * T + t] = sc->scores[(int64_t)h * sc->score_stride_head + (int64_t)t * sc->score_stride_token];
        return NQ_OK;
    }
    if (kind == NQ_SCORES_KEY_NORM) {
        // Keys with a small norm draw the most attention: rank by -|k|^2.
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t t = 0; t < T; ++t) {
                load_row(kv.k, kv.dtype, kv.k_layout, h, t, D, row);
                out[(size_t)h * T + t] = -dot(row, row, D);
            }
        return NQ_OK;
    }
    // Observation-window queries.
    const uint32_t Hq = ctx->cfg.num_q_heads, group = Hq / H, W = sc->num_queries;
    if (!sc->query_positions && W > T)
        return fail(NQ_ERR_INVALID_ARGUMENT, "scores.num_queries (%u) exceeds num_tokens (%u) and no query_positions given",
                    W, T);
    float *logit = ws.take<float>(T);
    float *acc = ws.take<float>(T);
    float *pooled = ws.take<float>(T);
    if (!logit || !acc || !pooled) return fail(NQ_ERR_BUFFER_TOO_SMALL, "workspace too small for query scores");
    const float inv_sqrt_d = (float)(1.0 / std::sqrt((double)D));
    const uint32_t half = (sc->pool_kernel ? sc->pool_kernel : kDefaultPoolKernel) / 2;
    float q[kMaxHeadDim];
    for (size_t i = 0; i < (size_t)H * T; ++i) out[i] = 0.0f;
    for (uint32_t qh = 0; qh < Hq; ++qh) {
        const uint32_t h = qh / group;
        for (uint32_t t = 0; t < T; ++t) acc[t] = 0.0f;
        for (uint32_t i = 0; i < W; ++i) {
            int64_t qpos = sc->query_positions ? sc->query_positions[i] : positions[T - W + i];
            load_query(*sc, qh, i, D, q);
            float m = -INFINITY;
            uint32_t n = 0;  // keys visible to this query (positions increase)
            for (; n < T && positions[n] <= qpos; ++n) {
                load_row(kv.k, kv.dtype, kv.k_layout, h, n, D, row);
                logit[n] = dot(q, row, D) * inv_sqrt_d;
                if (logit[n] > m) m = logit[n];
            }
            if (n == 0 || !(m > -INFINITY && m < INFINITY)) continue;
            float z = 0.0f;
            for (uint32_t t = 0; t < n; ++t) {
                logit[t] = nq_expf_nonpos(logit[t] - m);
                z += logit[t];
            }
            const float inv_z = 1.0f / z;
            for (uint32_t t = 0; t < n; ++t) acc[t] += logit[t] * inv_z;
        }
        for (uint32_t t = 0; t < T; ++t) {
            uint32_t a = t > half ? t - half : 0, b = t + half < T ? t + half : T - 1;
            float mx = acc[a];
            for (uint32_t u = a + 1; u <= b; ++u) mx = acc[u] > mx ? acc[u] : mx;
            pooled[t] = mx;
        }
        for (uint32_t t = 0; t < T; ++t) out[(size_t)h * T + t] += pooled[t];
    }
    return NQ_OK;
}

}  // namespace nq
