// Validation of K/V and score descriptors: every message names the field at fault.
#include <algorithm>
#include <cinttypes>
#include <cstdlib>
#include <new>
#include <vector>

#include "../backend.h"
#include "internal.h"

namespace nq {

uint32_t dtype_bytes(nq_dtype t) {
    switch (t) {
    case NQ_DTYPE_F16:
    case NQ_DTYPE_BF16: return 2;
    case NQ_DTYPE_F32: return 4;
    }
    return 0;
}

const char *dtype_name(nq_dtype t) {
    switch (t) {
    case NQ_DTYPE_F16: return "f16";
    case NQ_DTYPE_BF16: return "bf16";
    case NQ_DTYPE_F32: return "f32";
    }
    return "unknown";
}

namespace {

// Device memory of a backend this library holds.
bool gpu_memory(nq_memory m) {
    const BackendOps *be = m != NQ_MEMORY_HOST ? backend_for(m) : nullptr;
    return be != nullptr;
}

struct Axis {
    int64_t stride;
    uint64_t extent;
};

// |stride| without negating INT64_MIN (undefined behaviour): that stride is refused by
// the callers before any arithmetic, as no span of two elements fits in int64 bytes.
uint64_t abs_stride(int64_t s) { return s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s; }

// Sufficient condition for (i, j, k) -> sum i*s_i to be one-to-one: sorted by |stride|,
// every stride exceeds the span of the smaller ones. Also guards overflow: the span,
// times the element size, must fit in int64 bytes, since every offset the backends form
// is an element offset times the element size added to a pointer.
bool axes_injective(Axis *ax, int n, uint32_t elem_bytes, uint64_t *span_out) {
    for (int i = 0; i < n; ++i)
        if (ax[i].stride == INT64_MIN && ax[i].extent > 1) return false;
    std::sort(ax, ax + n, [](const Axis &a, const Axis &b) { return abs_stride(a.stride) < abs_stride(b.stride); });
    const uint64_t limit = (uint64_t)INT64_MAX / elem_bytes;  // largest element span in bytes
    uint64_t span = 0;  // max |offset| reachable by the axes so far
    for (int i = 0; i < n; ++i) {
        if (ax[i].extent <= 1) continue;
        uint64_t s = abs_stride(ax[i].stride);
        if (s == 0 || s <= span) return false;
        if (s > limit / (ax[i].extent - 1)) return false;
        uint64_t add = s * (ax[i].extent - 1);
        if (span > limit - add) return false;
        span += add;
    }
    *span_out = span;
    return true;
}

nq_status validate_layout(const nq_layout &l, uint32_t heads, uint32_t tokens, uint32_t head_dim, uint32_t eb,
                          const char *which, const char *kv) {
    if (l.reserved0)
        return fail(NQ_ERR_UNSUPPORTED, "%s.%s_layout.reserved0 is %u: must be 0 (reserved for later use)", which, kv,
                    l.reserved0);
    int64_t sd = l.stride_dim ? l.stride_dim : 1;
    if (l.kind == NQ_LAYOUT_STRIDED) {
        Axis ax[3] = {{l.stride_head, heads}, {l.stride_token, tokens}, {sd, head_dim}};
        uint64_t span;
        if (!axes_injective(ax, 3, eb, &span))
            return fail(NQ_ERR_INVALID_ARGUMENT,
                        "%s.%s_layout: strides (head %" PRId64 ", token %" PRId64 ", dim %" PRId64
                        ") make distinct elements overlap or their byte offsets overflow int64",
                        which, kv, l.stride_head, l.stride_token, sd);
        return NQ_OK;
    }
    if (l.kind != NQ_LAYOUT_PAGED)
        return fail(NQ_ERR_INVALID_ARGUMENT, "%s.%s_layout.kind is %d: not STRIDED or PAGED", which, kv, (int)l.kind);
    if (l.page_size == 0) return fail(NQ_ERR_INVALID_ARGUMENT, "%s.%s_layout.page_size is 0", which, kv);
    if (!l.page_table) return fail(NQ_ERR_INVALID_ARGUMENT, "%s.%s_layout.page_table is NULL", which, kv);
    if (l.num_pages == 0) return fail(NQ_ERR_INVALID_ARGUMENT, "%s.%s_layout.num_pages is 0", which, kv);
    Axis ax[4] = {{l.stride_token, l.page_size}, {l.stride_head, heads}, {sd, head_dim}, {l.stride_page, l.num_pages}};
    uint64_t span;
    if (!axes_injective(ax, 4, eb, &span))
        return fail(NQ_ERR_INVALID_ARGUMENT,
                    "%s.%s_layout: strides (page %" PRId64 ", token %" PRId64 ", head %" PRId64 ", dim %" PRId64
                    ") make distinct elements overlap or their byte offsets overflow int64",
                    which, kv, l.stride_page, l.stride_token, l.stride_head, sd);
    const uint32_t pages = (tokens + l.page_size - 1) / l.page_size;
    for (uint32_t i = 0; i < pages; ++i) {
        int32_t p = l.page_table[i];
        if (p < 0 || (uint32_t)p >= l.num_pages)
            return fail(NQ_ERR_INVALID_ARGUMENT, "%s.%s_layout.page_table[%u] is %d: outside 0..num_pages-1 (%u)", which,
                        kv, i, p, l.num_pages - 1);
    }
    // A page used twice would alias tokens. Up to kBitmapPages pages a bitmap reused by
    // this thread (allocated once, all zero between calls) finds a repeat in one pass.
    // num_pages is the caller's pool size and may be up to 2^32 - 1, so larger pools sort
    // a copy of the entries instead: memory proportional to the tokens, not the pool.
    constexpr uint32_t kBitmapPages = 1u << 20;
    int64_t repeat = -1;
    try {
        if (l.num_pages <= kBitmapPages) {
            thread_local std::vector<uint8_t> seen;
            if (seen.size() < l.num_pages) seen.resize(l.num_pages);
            uint32_t i = 0;
            for (; i < pages && !seen[(uint32_t)l.page_table[i]]; ++i) seen[(uint32_t)l.page_table[i]] = 1;
            if (i < pages) repeat = i;
            for (uint32_t j = 0; j < i; ++j) seen[(uint32_t)l.page_table[j]] = 0;
        } else {
            thread_local std::vector<int32_t> sorted;
            sorted.assign(l.page_table, l.page_table + pages);
            std::sort(sorted.begin(), sorted.end());
            auto dup = std::adjacent_find(sorted.begin(), sorted.end());
            if (dup != sorted.end()) {
                bool once = false;
                for (uint32_t i = 0; i < pages && repeat < 0; ++i)
                    if (l.page_table[i] == *dup) {
                        if (once) repeat = i;
                        once = true;
                    }
            }
        }
    } catch (const std::bad_alloc &) {
        return fail(NQ_ERR_OUT_OF_MEMORY, "%s.%s_layout: no memory to check %u page table entries for repeats", which,
                    kv, pages);
    }
    if (repeat >= 0)
        return fail(NQ_ERR_INVALID_ARGUMENT, "%s.%s_layout.page_table[%u] repeats page %d", which, kv,
                    (uint32_t)repeat, l.page_table[repeat]);
    return NQ_OK;
}

// Element-offset range [lo, hi] a validated layout can reach.
void layout_range(const nq_layout &l, uint32_t heads, uint32_t tokens, uint32_t head_dim, __int128 *lo, __int128 *hi) {
    *lo = *hi = 0;
    auto extend = [&](int64_t stride, uint64_t n) {
        if (n <= 1) return;
        const __int128 e = (__int128)stride * (__int128)(n - 1);
        if (e > 0) *hi += e; else *lo += e;
    };
    extend(l.stride_head, heads);
    extend(l.stride_dim ? l.stride_dim : 1, head_dim);
    if (l.kind == NQ_LAYOUT_PAGED) {
        extend(l.stride_token, l.page_size);
        extend(l.stride_page, l.num_pages);
    } else {
        extend(l.stride_token, tokens);
    }
}

// Whether delta = sum c_i * s_i for some integers |c_i| <= extent_i - 1: the difference
// of two elements' offsets under one injective layout. Axes sorted by |stride|,
// largest first; each stride exceeds the span of the smaller ones, so at most two
// coefficients fit at every level.
bool reachable_difference(const Axis *ax, int n, __int128 delta) {
    if (n == 0) return delta == 0;
    __int128 rest = 0;
    for (int i = 1; i < n; ++i)
        if (ax[i].extent > 1) rest += (__int128)abs_stride(ax[i].stride) * (__int128)(ax[i].extent - 1);
    const __int128 s = abs_stride(ax[0].stride), m = ax[0].extent ? ax[0].extent - 1 : 0;
    if (s == 0 || m == 0) return reachable_difference(ax + 1, n - 1, delta);
    auto floor_div = [](__int128 a, __int128 b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
    __int128 c_lo = -floor_div(-(delta - rest), s), c_hi = floor_div(delta + rest, s);
    if (c_lo < -m) c_lo = -m;
    if (c_hi > m) c_hi = m;
    for (__int128 c = c_lo; c <= c_hi; ++c)
        if (reachable_difference(ax + 1, n - 1, delta - c * s)) return true;
    return false;
}

bool same_layout(const nq_layout &a, const nq_layout &b, uint32_t tokens) {
    if (a.kind != b.kind || a.stride_head != b.stride_head || a.stride_token != b.stride_token ||
        (a.stride_dim ? a.stride_dim : 1) != (b.stride_dim ? b.stride_dim : 1))
        return false;
    if (a.kind != NQ_LAYOUT_PAGED) return true;
    if (a.page_size != b.page_size || a.stride_page != b.stride_page || a.num_pages != b.num_pages) return false;
    const uint32_t pages = (tokens + a.page_size - 1) / a.page_size;
    return a.page_table == b.page_table || std::memcmp(a.page_table, b.page_table, (size_t)pages * 4) == 0;
}

}  // namespace

nq_status validate_outputs_disjoint(const nq_context *ctx, const nq_kv_desc &out, const char *which) {
    const uint32_t H = ctx->cfg.num_kv_heads, D = ctx->cfg.head_dim, T = out.num_tokens, eb = dtype_bytes(out.dtype);
    if (T == 0) return NQ_OK;
    __int128 klo, khi, vlo, vhi;
    layout_range(out.k_layout, H, T, D, &klo, &khi);
    layout_range(out.v_layout, H, T, D, &vlo, &vhi);
    const __int128 k0 = (__int128)(intptr_t)out.k, v0 = (__int128)(intptr_t)out.v;
    // Byte ranges [first, last] of every element the two layouts can reach.
    if (k0 + khi * eb + eb - 1 < v0 + vlo * eb || v0 + vhi * eb + eb - 1 < k0 + klo * eb) return NQ_OK;
    if (!same_layout(out.k_layout, out.v_layout, T))
        return fail(NQ_ERR_INVALID_ARGUMENT,
                    "%s.k and %s.v overlap: their layouts differ and the memory they span intersects; K and V outputs "
                    "must not share elements",
                    which, which);
    // One layout for both (fused K/V caches interleave them): the elements overlap when
    // the distance between the bases is the difference of two elements' offsets.
    const nq_layout &l = out.k_layout;
    const int64_t sd = l.stride_dim ? l.stride_dim : 1;
    Axis ax[4] = {{l.stride_head, H}, {sd, D}, {l.stride_token, l.kind == NQ_LAYOUT_PAGED ? l.page_size : T},
                  {l.kind == NQ_LAYOUT_PAGED ? l.stride_page : 0, l.kind == NQ_LAYOUT_PAGED ? l.num_pages : 1}};
    std::sort(ax, ax + 4, [](const Axis &a, const Axis &b) { return abs_stride(a.stride) > abs_stride(b.stride); });
    const __int128 delta = v0 - k0;
    // Elements of eb bytes overlap when the distance rounded down or up to whole
    // elements is reachable.
    const __int128 d_floor = delta >= 0 ? delta / eb : -((-delta + eb - 1) / eb);
    if (reachable_difference(ax, 4, d_floor) || (delta % eb != 0 && reachable_difference(ax, 4, d_floor + 1)))
        return fail(NQ_ERR_INVALID_ARGUMENT, "%s.k and %s.v overlap: K and V outputs must not share elements", which,
                    which);
    return NQ_OK;
}

nq_status validate_kv(const nq_context *ctx, const nq_kv_desc &kv, bool is_output, const char *which) {
    const nq_config &c = ctx->cfg;
    uint32_t eb = dtype_bytes(kv.dtype);
    if (!eb)
        return fail(NQ_ERR_UNSUPPORTED, "%s.dtype is %d: supported are NQ_DTYPE_F16, NQ_DTYPE_BF16, NQ_DTYPE_F32", which,
                    (int)kv.dtype);
    if (gpu_memory(kv.memory) && backend_for(kv.memory)->device_check)
        NQ_TRY(backend_for(kv.memory)->device_check(kv.device));
    if (kv.memory != NQ_MEMORY_HOST && !gpu_memory(kv.memory)) {
        if (kv.memory == NQ_MEMORY_CUDA || kv.memory == NQ_MEMORY_HIP)
            return fail(NQ_ERR_BACKEND_UNAVAILABLE, "%s.memory is %s, but this library was built without that backend",
                        which, kv.memory == NQ_MEMORY_CUDA ? "CUDA" : "HIP");
        return fail(NQ_ERR_INVALID_ARGUMENT, "%s.memory is %d: not an nq_memory", which, (int)kv.memory);
    }
    if (kv.num_tokens == 0 && !is_output) return fail(NQ_ERR_INVALID_ARGUMENT, "%s.num_tokens is 0", which);
    if (!kv.k) return fail(NQ_ERR_INVALID_ARGUMENT, "%s.k is NULL", which);
    if (!kv.v) return fail(NQ_ERR_INVALID_ARGUMENT, "%s.v is NULL", which);
    if ((uintptr_t)kv.k % eb)
        return fail(NQ_ERR_INVALID_ARGUMENT, "%s.k is not aligned to its %u-byte %s elements", which, eb,
                    dtype_name(kv.dtype));
    if ((uintptr_t)kv.v % eb)
        return fail(NQ_ERR_INVALID_ARGUMENT, "%s.v is not aligned to its %u-byte %s elements", which, eb,
                    dtype_name(kv.dtype));
    if (kv.num_tokens) {
        NQ_TRY(validate_layout(kv.k_layout, c.num_kv_heads, kv.num_tokens, c.head_dim, eb, which, "k"));
        NQ_TRY(validate_layout(kv.v_layout, c.num_kv_heads, kv.num_tokens, c.head_dim, eb, which, "v"));
    }
    if (!is_output) {
        if (kv.positions) {
            for (uint32_t i = 0; i < kv.num_tokens; ++i) {
                int64_t p = kv.positions[i];
                if (p < 0 || p >= ((int64_t)1 << 32))
                    return fail(NQ_ERR_INVALID_ARGUMENT, "%s.positions[%u] is %" PRId64 ": must be in 0..2^32-1", which, i,
                                p);
                if (i && p <= kv.positions[i - 1])
                    return fail(NQ_ERR_INVALID_ARGUMENT,
                                "%s.positions[%u] (%" PRId64 ") is not greater than positions[%u] (%" PRId64 ")", which,
                                i, p, i - 1, kv.positions[i - 1]);
            }
        } else if (kv.start_position < 0 || kv.start_position > ((int64_t)1 << 32) - (int64_t)kv.num_tokens) {
            // Compared without forming start_position + num_tokens, which overflows near INT64_MAX.
            return fail(NQ_ERR_INVALID_ARGUMENT,
                        "%s.start_position is %" PRId64 ": with %u tokens the positions must stay in 0..2^32-1", which,
                        kv.start_position, kv.num_tokens);
        }
    }
    return NQ_OK;
}

nq_status validate_scores(const nq_context *ctx, const nq_kv_desc &kv, const nq_score_desc &sc) {
    const nq_config &c = ctx->cfg;
    if (sc.reserved0)
        return fail(NQ_ERR_UNSUPPORTED, "scores.reserved0 is %u: must be 0 (reserved for later use)", sc.reserved0);
    if (sc.memory != NQ_MEMORY_HOST && !(gpu_memory(sc.memory) && kv.memory == sc.memory))
        return fail(NQ_ERR_BACKEND_UNAVAILABLE, "scores.memory is %d: scores live in host memory or in the memory of K/V",
                    (int)sc.memory);
    switch (sc.kind) {
    case NQ_SCORES_KEY_NORM: return NQ_OK;
    case NQ_SCORES_GIVEN: {
        if (!sc.scores) return fail(NQ_ERR_INVALID_ARGUMENT, "scores.scores is NULL (kind GIVEN)");
        Axis ax[2] = {{sc.score_stride_head, c.num_kv_heads}, {sc.score_stride_token, kv.num_tokens}};
        uint64_t span;
        if (!axes_injective(ax, 2, 4, &span))
            return fail(NQ_ERR_INVALID_ARGUMENT,
                        "scores.score_stride_head/score_stride_token overlap or their byte offsets overflow int64");
        if ((uintptr_t)sc.scores % 4) return fail(NQ_ERR_INVALID_ARGUMENT, "scores.scores is not 4-byte aligned");
        return NQ_OK;
    }
    case NQ_SCORES_QUERIES: {
        if (!sc.queries) return fail(NQ_ERR_INVALID_ARGUMENT, "scores.queries is NULL (kind QUERIES)");
        uint32_t eb = dtype_bytes(sc.query_dtype);
        if (!eb) return fail(NQ_ERR_UNSUPPORTED, "scores.query_dtype is %d: not F16, BF16 or F32", (int)sc.query_dtype);
        if ((uintptr_t)sc.queries % eb) return fail(NQ_ERR_INVALID_ARGUMENT, "scores.queries is misaligned");
        if (sc.num_queries == 0 || sc.num_queries > 1u << 20)
            return fail(NQ_ERR_INVALID_ARGUMENT, "scores.num_queries is %u: must be in 1..2^20", sc.num_queries);
        Axis ax[3] = {{sc.q_stride_head, c.num_q_heads},
                      {sc.q_stride_token, sc.num_queries},
                      {sc.q_stride_dim ? sc.q_stride_dim : 1, c.head_dim}};
        uint64_t span;
        if (!axes_injective(ax, 3, eb, &span))
            return fail(NQ_ERR_INVALID_ARGUMENT,
                        "scores.q_stride_head/q_stride_token/q_stride_dim overlap or their byte offsets overflow int64");
        uint32_t k = sc.pool_kernel ? sc.pool_kernel : kDefaultPoolKernel;
        if (k % 2 == 0 || k > 1023)
            return fail(NQ_ERR_INVALID_ARGUMENT, "scores.pool_kernel is %u: must be odd and < 1024", sc.pool_kernel);
        return NQ_OK;
    }
    }
    return fail(NQ_ERR_INVALID_ARGUMENT, "scores.kind is %d: not an nq_score_kind", (int)sc.kind);
}

}  // namespace nq
