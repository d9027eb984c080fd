// Sequences: a growing list of blocks for one (layer, sequence).
#include <algorithm>
#include <new>

#include "../backend.h"
#include "internal.h"
#include "fp_env.h"

namespace nq {
nq_status compress_chunk(nq_context *ctx, const nq_kv_desc *kv, const nq_score_desc *sc, void *stream,
                         bool first_chunk, nq_block **out);
nq_status decode_range(nq_context *ctx, const nq_block *blk, uint32_t begin, uint32_t end, const nq_kv_desc *out,
                       void *stream);
int64_t block_position(const nq_block &b, uint32_t head, uint32_t j);

namespace {

int64_t block_last_position(const nq_block &b) {
    // Stored positions of a device block are not readable from the host: its handle
    // carries the largest position from the plan instead.
    if (b.memory != NQ_MEMORY_HOST && b.g.pos_rows) return b.max_position;
    int64_t last = -1;
    for (uint32_t h = 0; h < (b.g.pos_rows > 1 ? b.h.num_heads : 1u); ++h)
        last = std::max(last, block_position(b, h, b.h.tokens_kept - 1));
    return last;
}

int64_t block_first_position(const nq_block &b) {
    if (b.memory != NQ_MEMORY_HOST && b.g.pos_rows) return (int64_t)b.h.first_position;
    int64_t first = INT64_MAX;
    for (uint32_t h = 0; h < (b.g.pos_rows > 1 ? b.h.num_heads : 1u); ++h)
        first = std::min(first, block_position(b, h, 0));
    return first;
}

nq_status push(nq_sequence *s, nq_block *b) {
    if (s->count == s->capacity) {
        size_t cap = s->capacity ? s->capacity * 2 : 8;
        const MemoryHooks &m = s->ctx->mem;
        auto **nb = static_cast<nq_block **>(m.alloc(cap * sizeof(nq_block *), 64));
        auto *ne = static_cast<uint64_t *>(m.alloc(cap * sizeof(uint64_t), 64));
        if (!nb || !ne) {
            m.release(nb);
            m.release(ne);
            return fail(NQ_ERR_OUT_OF_MEMORY, "growing the sequence's block list failed");
        }
        if (s->count) {
            std::memcpy(nb, s->blocks, s->count * sizeof(nq_block *));
            std::memcpy(ne, s->token_end, s->count * sizeof(uint64_t));
        }
        m.release(s->blocks);
        m.release(s->token_end);
        s->blocks = nb;
        s->token_end = ne;
        s->capacity = cap;
    }
    uint64_t before = s->count ? s->token_end[s->count - 1] : 0;
    s->blocks[s->count] = b;
    s->token_end[s->count] = before + b->h.tokens_kept;
    ++s->count;
    s->last_position = block_last_position(*b);
    return NQ_OK;
}

}  // namespace
}  // namespace nq

using namespace nq;

extern "C" NQ_API nq_status nq_sequence_create(nq_context *ctx, uint32_t layer, nq_sequence **out) {
    clear_error();
    if (!out) return fail(NQ_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = nullptr;
    if (!ctx) return fail(NQ_ERR_INVALID_ARGUMENT, "ctx is NULL");
    void *p = ctx->mem.alloc(sizeof(nq_sequence), alignof(nq_sequence));
    if (!p) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating a sequence failed");
    nq_sequence *s = new (p) nq_sequence();
    s->ctx = ctx;
    s->layer = layer;
    s->blocks = nullptr;
    s->token_end = nullptr;
    s->count = s->capacity = 0;
    s->last_position = -1;
    *out = s;
    return NQ_OK;
}

extern "C" NQ_API void nq_sequence_free(nq_sequence *s) {
    if (!s) return;
    for (size_t i = 0; i < s->count; ++i) nq_block_free(s->blocks[i]);
    const MemoryHooks &m = s->ctx->mem;
    m.release(s->blocks);
    m.release(s->token_end);
    MemoryHooks mem = m;
    s->~nq_sequence();
    mem.release(s);
}

extern "C" NQ_API nq_status nq_sequence_append(nq_sequence *s, const nq_kv_desc *kv_in, const nq_score_desc *sc,
                                               void *stream) {
    clear_error();
    DefaultFpEnv fp_env;  // results independent of the caller's MXCSR
    if (!s) return fail(NQ_ERR_INVALID_ARGUMENT, "seq is NULL");
    if (!kv_in) return fail(NQ_ERR_INVALID_ARGUMENT, "kv is NULL");
    nq_kv_desc kv;
    nq_kv_desc_init(&kv);
    NQ_TRY(copy_sized(kv_in, &kv, "nq_kv_desc"));
    kv.layer = s->layer;
    if (kv.num_tokens) {
        int64_t first = kv.positions ? kv.positions[0] : kv.start_position;
        if (first <= s->last_position)
            return fail(NQ_ERR_INVALID_ARGUMENT,
                        "kv positions start at %lld but the sequence already holds position %lld",
                        (long long)first, (long long)s->last_position);
    }
    nq_block *b = nullptr;
    NQ_TRY(compress_chunk(s->ctx, &kv, sc, stream, s->count == 0, &b));
    nq_status st = push(s, b);
    if (st != NQ_OK) nq_block_free(b);
    return st;
}

extern "C" NQ_API nq_status nq_sequence_append_block(nq_sequence *s, nq_block *b) {
    clear_error();
    if (!s) return fail(NQ_ERR_INVALID_ARGUMENT, "seq is NULL");
    if (!b) return fail(NQ_ERR_INVALID_ARGUMENT, "blk is NULL");
    if (!shape_matches(s->ctx, b->h))
        return fail(NQ_ERR_INVALID_ARGUMENT, "the block's heads/head_dim differ from the sequence's context");
    if (b->memory != NQ_MEMORY_HOST) return fail(NQ_ERR_UNSUPPORTED, "device blocks cannot join a host sequence");
    if (block_first_position(*b) <= s->last_position)
        return fail(NQ_ERR_INVALID_ARGUMENT, "the block starts at position %lld, not after the sequence's last (%lld)",
                    (long long)block_first_position(*b), (long long)s->last_position);
    return push(s, b);
}

extern "C" NQ_API size_t nq_sequence_num_blocks(const nq_sequence *s) { return s ? s->count : 0; }

extern "C" NQ_API const nq_block *nq_sequence_block(const nq_sequence *s, size_t i) {
    return (s && i < s->count) ? s->blocks[i] : nullptr;
}

extern "C" NQ_API nq_status nq_sequence_totals(const nq_sequence *s, uint64_t *tokens, uint64_t *bytes,
                                               uint64_t *original) {
    clear_error();
    if (!s) return fail(NQ_ERR_INVALID_ARGUMENT, "seq is NULL");
    uint64_t t = 0, b = 0, o = 0;
    for (size_t i = 0; i < s->count; ++i) {
        t += s->blocks[i]->h.tokens_kept;
        b += s->blocks[i]->g.total;
        o += 4ull * s->blocks[i]->h.num_heads * s->blocks[i]->h.tokens_in * s->blocks[i]->h.head_dim;
    }
    if (tokens) *tokens = t;
    if (bytes) *bytes = b;
    if (original) *original = o;
    return NQ_OK;
}

namespace {

// Calls fn(block index, first token in block, end token in block, output offset) for
// every block overlapping [begin, end).
template <class F> nq_status for_range(const nq_sequence *s, uint32_t begin, uint32_t end, F fn) {
    uint64_t total = s->count ? s->token_end[s->count - 1] : 0;
    if (begin > end || end > total)
        return fail(NQ_ERR_OUT_OF_RANGE, "token range [%u, %u) outside the sequence's %llu tokens", begin, end,
                    (unsigned long long)total);
    size_t i = std::upper_bound(s->token_end, s->token_end + s->count, (uint64_t)begin) - s->token_end;
    for (; i < s->count && begin < end; ++i) {
        uint64_t b0 = i ? s->token_end[i - 1] : 0;
        uint32_t lo = (uint32_t)(begin - b0);
        uint32_t hi = (uint32_t)(std::min<uint64_t>(end, s->token_end[i]) - b0);
        NQ_TRY(fn(i, lo, hi));
        begin = (uint32_t)(b0 + hi);
    }
    return NQ_OK;
}

}  // namespace

extern "C" NQ_API nq_status nq_sequence_decode(nq_sequence *s, uint32_t begin, uint32_t end, const nq_kv_desc *out_in,
                                               void *stream) {
    clear_error();
    DefaultFpEnv fp_env;  // results independent of the caller's MXCSR
    if (!s) return fail(NQ_ERR_INVALID_ARGUMENT, "seq is NULL");
    if (!out_in) return fail(NQ_ERR_INVALID_ARGUMENT, "out is NULL");
    nq_kv_desc out;
    nq_kv_desc_init(&out);
    NQ_TRY(copy_sized(out_in, &out, "nq_kv_desc"));
    if (out.num_tokens != end - begin || begin > end)
        return fail(NQ_ERR_INVALID_ARGUMENT, "out.num_tokens is %u but the range [%u, %u) has %u tokens", out.num_tokens,
                    begin, end, end - begin);
    const uint32_t start = begin;
    return for_range(s, begin, end, [&](size_t i, uint32_t lo, uint32_t hi) -> nq_status {
        // Shift the destination to this block's first output token.
        nq_kv_desc part = out;
        part.num_tokens = hi - lo;
        uint64_t b0 = i ? s->token_end[i - 1] : 0;
        uint32_t o = (uint32_t)(b0 + lo - start);
        if (o) {
            if (out.k_layout.kind == NQ_LAYOUT_PAGED || out.v_layout.kind == NQ_LAYOUT_PAGED) {
                if (o % out.k_layout.page_size || o % out.v_layout.page_size)
                    return fail(NQ_ERR_UNSUPPORTED,
                                "decoding a sequence into a paged layout needs block boundaries on page boundaries");
                part.k_layout.page_table += o / out.k_layout.page_size;
                part.v_layout.page_table += o / out.v_layout.page_size;
            } else {
                const uint32_t eb = dtype_bytes(out.dtype);
                part.k = static_cast<uint8_t *>(out.k) + (int64_t)o * out.k_layout.stride_token * eb;
                part.v = static_cast<uint8_t *>(out.v) + (int64_t)o * out.v_layout.stride_token * eb;
            }
        }
        return decode_range(s->ctx, s->blocks[i], lo, hi, &part, stream);
    });
}

extern "C" NQ_API nq_status nq_sequence_positions(const nq_sequence *s, uint32_t head, uint32_t begin, uint32_t end,
                                                  int64_t *dst) {
    clear_error();
    if (!s) return fail(NQ_ERR_INVALID_ARGUMENT, "seq is NULL");
    if (end > begin && !dst) return fail(NQ_ERR_INVALID_ARGUMENT, "dst is NULL");
    if (head >= s->ctx->cfg.num_kv_heads)
        return fail(NQ_ERR_OUT_OF_RANGE, "head %u: the sequence has %u heads", head, s->ctx->cfg.num_kv_heads);
    int64_t *w = dst;
    return for_range(s, begin, end, [&](size_t i, uint32_t lo, uint32_t hi) -> nq_status {
        if (s->blocks[i]->memory != NQ_MEMORY_HOST && s->blocks[i]->g.pos_rows)
            return fail(NQ_ERR_UNSUPPORTED, "block %zu of the sequence is in device memory: copy it to host "
                        "(nq_block_copy) to read its positions", i);
        for (uint32_t j = lo; j < hi; ++j) *w++ = block_position(*s->blocks[i], head, j);
        return NQ_OK;
    });
}
