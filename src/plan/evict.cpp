// Token selection: sinks and the recent window always stay, the rest is ranked by
// score. Ties go to the earlier token and NaN scores rank last, so the choice is a
// pure function of the scores.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "../backend.h"
#include "../api/internal.h"
#include "block_plan.h"

namespace nq {
namespace {

// floor(f * T) for f in [0, 1) in integer arithmetic: exact (a double product rounds
// for T above 2^29) and independent of the caller's rounding mode.
uint32_t floor_fraction(float f, uint32_t T) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u >> 31) || u == 0) return 0;
    const uint32_t e = (u >> 23) & 0xffu;
    if (e >= 127) return T;  // f >= 1 (or nan): validation keeps it out
    const uint64_t m = (u & 0x7fffffu) | (e ? 0x800000u : 0u);
    const uint32_t shift = 150u - (e ? e : 1u);  // f = m * 2^-shift, shift >= 24; m * T < 2^56
    return shift >= 64 ? 0u : (uint32_t)((m * T) >> shift);
}

}  // namespace

EvictBudget evict_budget(const LayerParams &lp, uint32_t T, uint32_t sinks) {
    EvictBudget b{};
    b.sinks = sinks;
    b.window = std::min<uint32_t>(lp.recent_window, T - b.sinks);
    uint32_t evict = floor_fraction(lp.evict_fraction, T);
    uint32_t keep = T - std::min(evict, T);
    keep = std::max(keep, b.sinks + b.window);
    keep = std::max(keep, 1u);
    b.keep = std::min(keep, T);
    b.evicting = b.keep < T;
    return b;
}

namespace {

uint32_t page_size_of(const nq_context *ctx, const nq_kv_desc &kv) {
    if (ctx->cfg.evict_page_size) return ctx->cfg.evict_page_size;
    if (kv.k_layout.kind == NQ_LAYOUT_PAGED) return kv.k_layout.page_size;
    return 16;
}

// Pages [0, head_pages) and [tail_first, pages) are forced (sinks, window). The
// partial last page is forced even without a window: only full pages are candidates,
// which keeps the planned count exact (and the page means inside the T tokens).
void forced_pages(const EvictBudget &b, uint32_t T, uint32_t P, uint32_t *head_pages, uint32_t *tail_first) {
    *head_pages = b.sinks ? (b.sinks + P - 1) / P : 0;
    *tail_first = (T - b.window) / P;
    if (*tail_first < *head_pages) *tail_first = *head_pages;
}

struct Ranked {
    const float *s;
    bool operator()(uint32_t a, uint32_t b) const {
        float x = s[a], y = s[b];
        bool xn = std::isnan(x), yn = std::isnan(y);
        if (xn != yn) return yn;  // non-nan first
        if (!xn && x != y) return x > y;
        return a < b;
    }
};

// Picks the m best of candidates idx[0..n) by score; leaves them in idx[0..m) sorted by index.
void top_m(uint32_t *idx, uint32_t n, uint32_t m, const float *score) {
    if (m < n) std::nth_element(idx, idx + m, idx + n, Ranked{score});
    std::sort(idx, idx + m);
}

}  // namespace

uint32_t planned_kept(const nq_context *ctx, const nq_kv_desc &kv, const EvictBudget &b) {
    const uint32_t T = kv.num_tokens;
    if (!b.evicting || ctx->cfg.evict_mode != NQ_EVICT_PAGED) return b.keep;
    const uint32_t P = page_size_of(ctx, kv);
    uint32_t hp, tf;
    forced_pages(b, T, P, &hp, &tf);
    uint32_t forced = std::min(T, hp * P) + (T - std::min(T, tf * P));
    if (forced >= b.keep) return std::min(T, forced);
    uint32_t free_pages = tf - hp;  // all full pages
    uint32_t want = (b.keep - forced + P - 1) / P;
    return forced + std::min(want, free_pages) * P;
}

nq_status select_tokens(const nq_context *ctx, const nq_kv_desc &kv, const EvictBudget &b, const float *scores,
                        uint32_t *kept, uint32_t *num_kept, uint32_t *rows, Workspace &ws) {
    const uint32_t T = kv.num_tokens, H = ctx->cfg.num_kv_heads;
    uint32_t *idx = ws.take<uint32_t>(T);
    float *sum = ws.take<float>(T);
    if (!idx || !sum) return fail(NQ_ERR_BUFFER_TOO_SMALL, "workspace too small for token selection");
    const uint32_t lo = b.sinks, hi = T - b.window, m = b.keep - b.sinks - b.window;

    auto emit = [&](uint32_t *row, const float *score) {
        uint32_t n = 0;
        for (uint32_t t = lo; t < hi; ++t) idx[n++] = t;
        top_m(idx, n, m, score);
        uint32_t k = 0;
        for (uint32_t t = 0; t < lo; ++t) row[k++] = t;
        for (uint32_t i = 0; i < m; ++i) row[k++] = idx[i];
        for (uint32_t t = hi; t < T; ++t) row[k++] = t;
    };

    switch (ctx->cfg.evict_mode) {
    case NQ_EVICT_PER_HEAD:
        for (uint32_t h = 0; h < H; ++h) emit(kept + (size_t)h * b.keep, scores + (size_t)h * T);
        *rows = H;
        *num_kept = b.keep;
        return NQ_OK;
    case NQ_EVICT_HEAD_SHARED:
        for (uint32_t t = 0; t < T; ++t) {
            float s = 0.0f;
            for (uint32_t h = 0; h < H; ++h) s += scores[(size_t)h * T + t];
            sum[t] = s;
        }
        emit(kept, sum);
        *rows = 1;
        *num_kept = b.keep;
        return NQ_OK;
    case NQ_EVICT_PAGED: {
        const uint32_t P = page_size_of(ctx, kv);
        const uint32_t pages = (T + P - 1) / P;
        uint32_t hp, tf;
        forced_pages(b, T, P, &hp, &tf);
        // mean score of each free page over its tokens and all heads
        for (uint32_t p = hp; p < tf; ++p) {
            float s = 0.0f;
            for (uint32_t h = 0; h < H; ++h)
                for (uint32_t t = p * P; t < (p + 1) * P; ++t) s += scores[(size_t)h * T + t];
            sum[p] = s / (float)(P * H);
        }
        uint32_t forced = std::min(T, hp * P) + (T - std::min(T, tf * P));
        uint32_t want = b.keep > forced ? (b.keep - forced + P - 1) / P : 0;
        uint32_t n = 0;
        for (uint32_t p = hp; p < tf; ++p) idx[n++] = p;
        want = std::min(want, n);
        top_m(idx, n, want, sum);
        uint32_t k = 0;
        auto add_page = [&](uint32_t p) {
            for (uint32_t t = p * P; t < std::min(T, (p + 1) * P); ++t) kept[k++] = t;
        };
        for (uint32_t p = 0; p < hp && p < pages; ++p) add_page(p);
        for (uint32_t i = 0; i < want; ++i) add_page(idx[i]);
        for (uint32_t p = std::max(tf, hp); p < pages; ++p) add_page(p);
        *rows = 1;
        *num_kept = k;
        return NQ_OK;
    }
    }
    return fail(NQ_ERR_INTERNAL, "unknown eviction mode %d", (int)ctx->cfg.evict_mode);
}

}  // namespace nq
