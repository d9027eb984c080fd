/* Size-tagged structs across library versions, in C99 as an old or new caller would
 * compile it:
 *  - an older caller's struct, cut at an earlier field, works and the fields it did not
 *    send take their defaults (the library reads nothing past `size`);
 *  - a newer caller's larger struct is accepted when the bytes the library does not
 *    know are zero, and rejected with NQ_ERR_UNSUPPORTED and a message naming the
 *    struct otherwise;
 *  - output structs are written up to the caller's size and no further. */
#include <stddef.h>
#include <stdlib.h>

#include "nq_test_util.h"

#define HEADS 2
#define DIM 64
#define TOKENS 96

static float g_k[HEADS * TOKENS * DIM], g_v[HEADS * TOKENS * DIM];
static float g_scores[HEADS * TOKENS];

/* A copy of the first `cut` bytes of `src` in a buffer of exactly `cut` bytes (so that
 * AddressSanitizer sees any read past it), or, with `garbage`, followed by 64 bytes of
 * 0xA5 (so that a plain build sees reads past it as changed behaviour). */
static void *cut_copy(const void *src, size_t cut, int garbage) {
    unsigned char *p = (unsigned char *)malloc(cut + (garbage ? 64 : 0));
    if (!p) abort();
    memcpy(p, src, cut);
    if (garbage) memset(p + cut, 0xA5, 64);
    memcpy(p, &cut, sizeof cut); /* the size field comes first */
    return p;
}

/* A copy of `src` grown by `extra` bytes, all zero except byte `nonzero_at` (relative
 * to the end of the struct) when it is >= 0. */
static void *grown_copy(const void *src, size_t size, size_t extra, int nonzero_at) {
    size_t total = size + extra;
    unsigned char *p = (unsigned char *)calloc(1, total);
    if (!p) abort();
    memcpy(p, src, size);
    memcpy(p, &total, sizeof total);
    if (nonzero_at >= 0) p[size + (size_t)nonzero_at] = 0x01;
    return p;
}

static nq_config caller_config(void) {
    nq_config c;
    nq_config_init(&c);
    c.head_dim = DIM;
    c.num_kv_heads = HEADS;
    c.num_q_heads = 2 * HEADS;
    c.preset = NQ_PRESET_CUSTOM;
    c.k_bits = 4;
    c.v_bits = 3;
    c.evict_fraction = 0.25f;
    c.sink_tokens = 2;
    c.recent_window = 8;
    c.fp16_sinks = 1;
    c.fp16_window = 4;
    c.rope.theta = 500000.0;
    c.rope.pairing = NQ_ROPE_INTERLEAVED;
    c.num_threads = 1;
    c.archive_zstd_level = 5;
    return c;
}

static void contiguous_kv(nq_kv_desc *kv, void *k, void *v) {
    nq_kv_desc_init(kv);
    kv->dtype = NQ_DTYPE_F32;
    kv->num_tokens = TOKENS;
    kv->k = k;
    kv->v = v;
    nq_layout_contiguous(&kv->k_layout, TOKENS, DIM);
    nq_layout_contiguous(&kv->v_layout, TOKENS, DIM);
}

static nq_config resolved(const nq_config *cfg) {
    nq_context *ctx = NULL;
    nq_config out;
    memset(&out, 0, sizeof out);
    out.size = sizeof out;
    CHECK_OK(nq_context_create(cfg, &ctx));
    CHECK_OK(nq_context_get_config(ctx, &out));
    nq_context_free(ctx);
    return out;
}

/* An older caller's nq_config cut at `cut` must act as the full config with the
 * defaults of nq_config_init past the cut. */
static void older_config(size_t cut, int garbage) {
    nq_config full = caller_config(), expect, got;
    nq_context *ctx = NULL;
    void *old = cut_copy(&full, cut, garbage);
    nq_config_init(&expect);
    memcpy(&expect, &full, cut);
    expect.size = sizeof expect;
    expect = resolved(&expect);
    memset(&got, 0, sizeof got);
    got.size = sizeof got;
    CHECK_OK(nq_context_create((const nq_config *)old, &ctx));
    if (ctx) {
        CHECK_OK(nq_context_get_config(ctx, &got));
        if (memcmp(&got, &expect, sizeof got) != 0) {
            fprintf(stderr, "config cut at %zu bytes (garbage %d) resolved differently\n", cut, garbage);
            ++nq_test_failures;
        }
    }
    nq_context_free(ctx);
    free(old);
}

static uint64_t digest_of(nq_context *ctx, const nq_kv_desc *kv, const nq_score_desc *sc) {
    nq_block *b = NULL;
    uint64_t d = 0;
    CHECK_OK(nq_compress_kv(ctx, kv, sc, NULL, &b));
    if (b) CHECK_OK(nq_block_digest(b, &d));
    nq_block_free(b);
    return d;
}

static void older_kv_and_scores(void) {
    nq_config cfg = caller_config();
    nq_context *ctx = NULL;
    nq_kv_desc full;
    nq_score_desc sfull;
    size_t kv_cuts[3], sc_cuts[3], i;
    uint64_t want, want_scored;
    nq_block *blk = NULL;
    static float dk[HEADS * TOKENS * DIM], dv[HEADS * TOKENS * DIM];
    static float rk[HEADS * TOKENS * DIM], rv[HEADS * TOKENS * DIM];

    kv_cuts[0] = offsetof(nq_kv_desc, positions);
    kv_cuts[1] = offsetof(nq_kv_desc, start_position);
    kv_cuts[2] = sizeof(nq_kv_desc);
    sc_cuts[0] = offsetof(nq_score_desc, queries);
    sc_cuts[1] = offsetof(nq_score_desc, pool_kernel);
    sc_cuts[2] = sizeof(nq_score_desc);

    CHECK_OK(nq_context_create(&cfg, &ctx));
    if (!ctx) return;
    contiguous_kv(&full, g_k, g_v);
    nq_score_desc_init(&sfull);
    sfull.kind = NQ_SCORES_GIVEN;
    sfull.scores = g_scores;
    sfull.score_stride_head = TOKENS;
    sfull.score_stride_token = 1;
    want = digest_of(ctx, &full, NULL);
    want_scored = digest_of(ctx, &full, &sfull);
    CHECK(want != want_scored); /* the given scores pick other tokens than the key norms */

    for (i = 0; i < 3; ++i) {
        int garbage;
        for (garbage = 0; garbage < 2; ++garbage) {
            void *kv = cut_copy(&full, kv_cuts[i], garbage);
            void *sc = cut_copy(&sfull, sc_cuts[i], garbage);
            size_t bound = 0, full_bound = 0;
            CHECK(digest_of(ctx, (const nq_kv_desc *)kv, NULL) == want);
            CHECK(digest_of(ctx, &full, (const nq_score_desc *)sc) == want_scored);
            CHECK_OK(nq_compress_bound(ctx, (const nq_kv_desc *)kv, &bound));
            CHECK_OK(nq_compress_bound(ctx, &full, &full_bound));
            CHECK(bound == full_bound && bound > 0);
            free(kv);
            free(sc);
        }
    }
    {   /* too short to hold the pointers: rejected, not read */
        void *kv = cut_copy(&full, offsetof(nq_kv_desc, k), 0);
        nq_block *b = NULL;
        CHECK_STATUS(nq_compress_kv(ctx, (const nq_kv_desc *)kv, NULL, NULL, &b), NQ_ERR_INVALID_ARGUMENT);
        CHECK(b == NULL);
        free(kv);
    }

    /* decode into an older caller's output descriptor */
    CHECK_OK(nq_compress_kv(ctx, &full, NULL, NULL, &blk));
    if (blk) {
        nq_block_info info;
        nq_kv_desc out;
        void *old;
        info.size = sizeof info;
        CHECK_OK(nq_block_get_info(blk, &info));
        contiguous_kv(&out, rk, rv);
        out.num_tokens = info.tokens_kept;
        nq_layout_contiguous(&out.k_layout, info.tokens_kept, DIM);
        nq_layout_contiguous(&out.v_layout, info.tokens_kept, DIM);
        CHECK_OK(nq_decode(ctx, blk, 0, info.tokens_kept, &out, NULL));
        out.k = dk;
        out.v = dv;
        old = cut_copy(&out, offsetof(nq_kv_desc, positions), 1);
        CHECK_OK(nq_decode(ctx, blk, 0, info.tokens_kept, (const nq_kv_desc *)old, NULL));
        CHECK(memcmp(dk, rk, sizeof(float) * HEADS * info.tokens_kept * DIM) == 0);
        CHECK(memcmp(dv, rv, sizeof(float) * HEADS * info.tokens_kept * DIM) == 0);
        free(old);
    }
    nq_block_free(blk);
    nq_context_free(ctx);
}

static int message_names(const char *what) {
    const char *m = nq_last_error();
    if (strstr(m, what) && strstr(m, "offset")) return 1;
    fprintf(stderr, "message \"%s\" should name %s and the offset\n", m, what);
    return 0;
}

static void newer_structs(void) {
    nq_config cfg = caller_config(), want = resolved(&cfg), got;
    nq_context *ctx = NULL;
    nq_kv_desc kv;
    nq_score_desc sc;
    void *p;
    nq_block *b = NULL;
    int at;

    /* zero tail: accepted and equal to the plain struct */
    p = grown_copy(&cfg, sizeof cfg, 40, -1);
    CHECK_OK(nq_context_create((const nq_config *)p, &ctx));
    if (ctx) {
        got.size = sizeof got;
        CHECK_OK(nq_context_get_config(ctx, &got));
        CHECK(memcmp(&got, &want, sizeof got) == 0);
    }
    free(p);
    /* a non-zero byte anywhere in the tail: NQ_ERR_UNSUPPORTED */
    for (at = 0; at < 40; at += 13) {
        nq_context *bad = (nq_context *)&at; /* must be set to NULL */
        p = grown_copy(&cfg, sizeof cfg, 40, at);
        CHECK_STATUS(nq_context_create((const nq_config *)p, &bad), NQ_ERR_UNSUPPORTED);
        CHECK(bad == NULL);
        CHECK(message_names("nq_config"));
        free(p);
    }
    if (!ctx) return;

    contiguous_kv(&kv, g_k, g_v);
    p = grown_copy(&kv, sizeof kv, 24, -1);
    CHECK(digest_of(ctx, (const nq_kv_desc *)p, NULL) == digest_of(ctx, &kv, NULL));
    free(p);
    p = grown_copy(&kv, sizeof kv, 24, 3);
    CHECK_STATUS(nq_compress_kv(ctx, (const nq_kv_desc *)p, NULL, NULL, &b), NQ_ERR_UNSUPPORTED);
    CHECK(b == NULL);
    CHECK(message_names("nq_kv_desc"));
    {
        size_t bytes = 0;
        CHECK_STATUS(nq_compress_bound(ctx, (const nq_kv_desc *)p, &bytes), NQ_ERR_UNSUPPORTED);
        CHECK(message_names("nq_kv_desc"));
    }
    free(p);

    nq_score_desc_init(&sc);
    p = grown_copy(&sc, sizeof sc, 16, 15);
    CHECK_STATUS(nq_compress_kv(ctx, &kv, (const nq_score_desc *)p, NULL, &b), NQ_ERR_UNSUPPORTED);
    CHECK(message_names("nq_score_desc"));
    free(p);
    {
        /* attention descriptors: a zero tail is accepted, a non-zero one named */
        nq_attention_desc ad;
        size_t bytes = 0, want_bytes = 0;
        nq_attention_desc_init(&ad);
        CHECK_OK(nq_attention_workspace_size(ctx, &ad, &want_bytes));
        p = grown_copy(&ad, sizeof ad, 16, -1);
        CHECK_OK(nq_attention_workspace_size(ctx, (const nq_attention_desc *)p, &bytes));
        CHECK(bytes == want_bytes);
        free(p);
        p = grown_copy(&ad, sizeof ad, 16, 9);
        CHECK_STATUS(nq_attention_workspace_size(ctx, (const nq_attention_desc *)p, &bytes), NQ_ERR_UNSUPPORTED);
        CHECK(message_names("nq_attention_desc"));
        free(p);
    }

    /* decode into a newer caller's output descriptor */
    CHECK_OK(nq_compress_kv(ctx, &kv, NULL, NULL, &b));
    if (b) {
        static float dk[HEADS * TOKENS * DIM], dv[HEADS * TOKENS * DIM];
        nq_block_info info;
        nq_kv_desc out;
        info.size = sizeof info;
        CHECK_OK(nq_block_get_info(b, &info));
        contiguous_kv(&out, dk, dv);
        out.num_tokens = info.tokens_kept;
        nq_layout_contiguous(&out.k_layout, info.tokens_kept, DIM);
        nq_layout_contiguous(&out.v_layout, info.tokens_kept, DIM);
        p = grown_copy(&out, sizeof out, 8, -1);
        CHECK_OK(nq_decode(ctx, b, 0, info.tokens_kept, (const nq_kv_desc *)p, NULL));
        free(p);
        p = grown_copy(&out, sizeof out, 8, 7);
        CHECK_STATUS(nq_decode(ctx, b, 0, info.tokens_kept, (const nq_kv_desc *)p, NULL), NQ_ERR_UNSUPPORTED);
        CHECK(message_names("nq_kv_desc"));
        free(p);
    }
    nq_block_free(b);
    nq_context_free(ctx);
}

/* Output structs: written up to the caller's size, never past it. */
static void output_structs(void) {
    nq_config cfg = caller_config();
    nq_context *ctx = NULL;
    nq_kv_desc kv;
    nq_block *b = NULL;
    nq_block_info full;
    nq_layer_params lp_full;
    unsigned char *p;
    size_t cut, i;

    CHECK_OK(nq_context_create(&cfg, &ctx));
    if (!ctx) return;
    contiguous_kv(&kv, g_k, g_v);
    CHECK_OK(nq_compress_kv(ctx, &kv, NULL, NULL, &b));
    if (!b) {
        nq_context_free(ctx);
        return;
    }
    memset(&full, 0, sizeof full);
    full.size = sizeof full;
    CHECK_OK(nq_block_get_info(b, &full));
    CHECK(full.tokens_in == TOKENS && full.num_heads == HEADS && full.head_dim == DIM);

    /* older: exactly `cut` bytes */
    cut = offsetof(nq_block_info, ratio);
    p = (unsigned char *)malloc(cut);
    memcpy(p, &cut, sizeof cut);
    CHECK_OK(nq_block_get_info(b, (nq_block_info *)p));
    CHECK(memcmp(p + sizeof(size_t), (const unsigned char *)&full + sizeof(size_t), cut - sizeof(size_t)) == 0);
    free(p);

    /* newer: the bytes past the library's struct are left alone */
    p = (unsigned char *)grown_copy(&full, sizeof full, 32, -1);
    memset(p + sizeof full, 0x5A, 32);
    CHECK_OK(nq_block_get_info(b, (nq_block_info *)p));
    CHECK(memcmp(p + sizeof(size_t), (const unsigned char *)&full + sizeof(size_t),
                 sizeof full - sizeof(size_t)) == 0);
    for (i = 0; i < 32; ++i) CHECK(p[sizeof full + i] == 0x5A);
    free(p);

    lp_full.size = sizeof lp_full;
    CHECK_OK(nq_context_layer_params(ctx, 0, &lp_full));
    CHECK(lp_full.k_bits == 4 && lp_full.v_bits == 3);
    cut = offsetof(nq_layer_params, evict_fraction);
    p = (unsigned char *)malloc(cut);
    memcpy(p, &cut, sizeof cut);
    CHECK_OK(nq_context_layer_params(ctx, 0, (nq_layer_params *)p));
    CHECK(memcmp(p + sizeof(size_t), (const unsigned char *)&lp_full + sizeof(size_t), cut - sizeof(size_t)) == 0);
    free(p);

    cut = offsetof(nq_config, rope);
    p = (unsigned char *)malloc(cut);
    memcpy(p, &cut, sizeof cut);
    CHECK_OK(nq_context_get_config(ctx, (nq_config *)p));
    {
        uint32_t head_dim = 0;
        memcpy(&head_dim, p + offsetof(nq_config, head_dim), sizeof head_dim);
        CHECK(head_dim == DIM);
    }
    free(p);

    nq_block_free(b);
    nq_context_free(ctx);
}

/* Arrays of size-tagged structs (nq_compress_batch, nq_workspace_size) are strided by
 * their first element's size, which every element must share: an older caller's array
 * of smaller structs and a newer caller's of larger ones give the blocks of the
 * library's own array. Each array is allocated at exactly its bytes. */
static void *pack_array(const void *src, size_t elem, size_t n, size_t stride) {
    unsigned char *p = (unsigned char *)calloc(n, stride);
    size_t i;
    if (!p) abort();
    for (i = 0; i < n; ++i) {
        memcpy(p + i * stride, (const unsigned char *)src + i * elem, stride < elem ? stride : elem);
        memcpy(p + i * stride, &stride, sizeof stride);
    }
    return p;
}

#define BATCH 3

static void batch_digests(nq_context *ctx, const void *items, const void *scores, uint64_t *digests) {
    nq_block *out[BATCH] = {NULL, NULL, NULL};
    nq_status st[BATCH];
    int i;
    CHECK_OK(nq_compress_batch(ctx, (const nq_kv_desc *)items, (const nq_score_desc *)scores, BATCH, NULL, NULL, 0,
                               NULL, out, st));
    for (i = 0; i < BATCH; ++i) {
        digests[i] = 0;
        if (out[i]) CHECK_OK(nq_block_digest(out[i], &digests[i]));
        nq_block_free(out[i]);
    }
}

static void batch_arrays(void) {
    nq_config cfg = caller_config();
    nq_context *ctx = NULL;
    nq_kv_desc items[BATCH];
    nq_score_desc scores[BATCH];
    uint64_t want[BATCH], got[BATCH];
    size_t want_ws = 0, got_ws = 0, strides[4];
    int i, j;

    CHECK_OK(nq_context_create(&cfg, &ctx));
    if (!ctx) return;
    for (i = 0; i < BATCH; ++i) { /* ragged items over different parts of K and V */
        contiguous_kv(&items[i], g_k + 16 * i * DIM, g_v + 16 * i * DIM);
        items[i].num_tokens = TOKENS - 16 * (uint32_t)i;
        items[i].layer = (uint32_t)i;
        nq_score_desc_init(&scores[i]);
        scores[i].kind = NQ_SCORES_GIVEN;
        scores[i].scores = g_scores + 16 * i;
        scores[i].score_stride_head = TOKENS;
        scores[i].score_stride_token = 1;
    }
    batch_digests(ctx, items, scores, want);
    for (i = 0; i < BATCH; ++i) CHECK(want[i] != 0 && (i == 0 || want[i] != want[i - 1]));
    CHECK_OK(nq_workspace_size(ctx, items, BATCH, &want_ws));

    strides[0] = offsetof(nq_kv_desc, positions); /* older callers */
    strides[1] = offsetof(nq_kv_desc, start_position);
    strides[2] = sizeof(nq_kv_desc) + 24; /* a newer caller, zero tail */
    strides[3] = sizeof(nq_kv_desc);
    for (j = 0; j < 4; ++j) {
        void *kv = pack_array(items, sizeof items[0], BATCH, strides[j]);
        CHECK_OK(nq_workspace_size(ctx, (const nq_kv_desc *)kv, BATCH, &got_ws));
        CHECK(got_ws == want_ws);
        batch_digests(ctx, kv, scores, got);
        for (i = 0; i < BATCH; ++i) CHECK(got[i] == want[i]);
        free(kv);
    }
    {   /* scores of an older and a newer caller */
        size_t sc_strides[2];
        sc_strides[0] = offsetof(nq_score_desc, queries);
        sc_strides[1] = sizeof(nq_score_desc) + 16;
        for (j = 0; j < 2; ++j) {
            void *sc = pack_array(scores, sizeof scores[0], BATCH, sc_strides[j]);
            batch_digests(ctx, items, sc, got);
            for (i = 0; i < BATCH; ++i) CHECK(got[i] == want[i]);
            free(sc);
        }
    }
    {   /* sizes that differ within an array, or cannot stride one: refused */
        nq_block *out[BATCH] = {NULL, NULL, NULL};
        size_t bytes = 0;
        unsigned char *kv = (unsigned char *)pack_array(items, sizeof items[0], BATCH, sizeof(nq_kv_desc) + 8);
        void *sc;
        size_t other = sizeof(nq_kv_desc);
        memcpy(kv + 2 * (sizeof(nq_kv_desc) + 8), &other, sizeof other);
        CHECK_STATUS(nq_compress_batch(ctx, (const nq_kv_desc *)kv, NULL, BATCH, NULL, NULL, 0, NULL, out, NULL),
                     NQ_ERR_INVALID_ARGUMENT);
        CHECK(strstr(nq_last_error(), "items[2].size") != NULL);
        CHECK(out[0] == NULL && out[1] == NULL && out[2] == NULL);
        CHECK_STATUS(nq_workspace_size(ctx, (const nq_kv_desc *)kv, BATCH, &bytes), NQ_ERR_INVALID_ARGUMENT);
        free(kv);
        kv = (unsigned char *)pack_array(items, sizeof items[0], BATCH, sizeof(nq_kv_desc) + 8);
        kv[sizeof(nq_kv_desc) + 8 + sizeof(nq_kv_desc) + 3] = 1; /* unknown non-zero byte in items[1] */
        CHECK_STATUS(nq_compress_batch(ctx, (const nq_kv_desc *)kv, NULL, BATCH, NULL, NULL, 0, NULL, out, NULL),
                     NQ_ERR_UNSUPPORTED);
        CHECK(strstr(nq_last_error(), "items[1]") != NULL && message_names("nq_kv_desc"));
        free(kv);
        kv = (unsigned char *)pack_array(items, sizeof items[0], BATCH, sizeof(size_t));
        CHECK_STATUS(nq_compress_batch(ctx, (const nq_kv_desc *)kv, NULL, BATCH, NULL, NULL, 0, NULL, out, NULL),
                     NQ_ERR_INVALID_ARGUMENT);
        CHECK(strstr(nq_last_error(), "items[0].size") != NULL);
        free(kv);
        sc = pack_array(scores, sizeof scores[0], BATCH, sizeof(nq_score_desc) + 4);
        CHECK_STATUS(nq_compress_batch(ctx, items, (const nq_score_desc *)sc, BATCH, NULL, NULL, 0, NULL, out, NULL),
                     NQ_ERR_INVALID_ARGUMENT);
        CHECK(strstr(nq_last_error(), "scores[0].size") != NULL);
        free(sc);
    }
    nq_context_free(ctx);
}

/* A size that cannot be a struct's size. */
static void bad_sizes(void) {
    nq_config cfg = caller_config();
    nq_context *ctx = NULL;
    cfg.size = 0;
    CHECK_STATUS(nq_context_create(&cfg, &ctx), NQ_ERR_INVALID_ARGUMENT);
    CHECK(strstr(nq_last_error(), "nq_config") != NULL);
    cfg.size = 4;
    CHECK_STATUS(nq_context_create(&cfg, &ctx), NQ_ERR_INVALID_ARGUMENT);
    cfg.size = (size_t)1 << 40;
    CHECK_STATUS(nq_context_create(&cfg, &ctx), NQ_ERR_INVALID_ARGUMENT);
    CHECK(ctx == NULL);
}

/* The library's own view of the layouts equals this compiler's. */
static void abi_introspection(void) {
    CHECK(nq_abi_sizeof("nq_config") == sizeof(nq_config));
    CHECK(nq_abi_sizeof("nq_kv_desc") == sizeof(nq_kv_desc));
    CHECK(nq_abi_sizeof("nq_score_desc") == sizeof(nq_score_desc));
    CHECK(nq_abi_sizeof("nq_block_info") == sizeof(nq_block_info));
    CHECK(nq_abi_sizeof("nq_layout") == sizeof(nq_layout));
    CHECK(nq_abi_sizeof("nq_rope") == sizeof(nq_rope));
    CHECK(nq_abi_sizeof("nq_layer_params") == sizeof(nq_layer_params));
    CHECK(nq_abi_sizeof("nq_attention_desc") == sizeof(nq_attention_desc));
    CHECK(nq_abi_offsetof("nq_attention_desc", "num_splits") == offsetof(nq_attention_desc, num_splits));
    CHECK(nq_abi_offsetof("nq_attention_desc", "q_positions") == offsetof(nq_attention_desc, q_positions));
    CHECK(nq_abi_offsetof("nq_config", "rope.theta") == offsetof(nq_config, rope.theta));
    CHECK(nq_abi_offsetof("nq_config", "archive_zstd_level") == offsetof(nq_config, archive_zstd_level));
    CHECK(nq_abi_offsetof("nq_kv_desc", "v_layout.page_table") == offsetof(nq_kv_desc, v_layout.page_table));
    CHECK(nq_abi_offsetof("nq_block_info", "padding_bytes") == offsetof(nq_block_info, padding_bytes));
    CHECK(nq_abi_sizeof("nq_no_such_struct") == (size_t)-1);
    CHECK(nq_abi_offsetof("nq_config", "no_such_field") == (size_t)-1);
    CHECK(nq_abi_sizeof(NULL) == (size_t)-1);
    CHECK(nq_version_number() == NQ_VERSION_NUMBER);
}

int main(void) {
    size_t cuts[8], i;
    nq_test_fill(g_k, sizeof g_k / sizeof g_k[0], 1);
    nq_test_fill(g_v, sizeof g_v / sizeof g_v[0], 2);
    nq_test_fill(g_scores, sizeof g_scores / sizeof g_scores[0], 3);

    cuts[0] = offsetof(nq_config, num_q_heads);
    cuts[1] = offsetof(nq_config, k_bits);
    cuts[2] = offsetof(nq_config, evict_mode);
    cuts[3] = offsetof(nq_config, rope);
    cuts[4] = offsetof(nq_config, backend);
    cuts[5] = offsetof(nq_config, allocator);
    cuts[6] = offsetof(nq_config, archive_zstd_level);
    cuts[7] = sizeof(nq_config);
    for (i = 0; i < 8; ++i) {
        older_config(cuts[i], 0);
        older_config(cuts[i], 1);
    }
    older_kv_and_scores();
    newer_structs();
    output_structs();
    batch_arrays();
    bad_sizes();
    abi_introspection();
    return nq_test_report("test_struct_sizes");
}
