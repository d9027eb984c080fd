/* The library from pure C99 through its header: create a context, compress, inspect,
 * decode, serialise, deserialise, grow a sequence, provoke an error, free. Written in
 * the common subset of C99 and C++ so that test_c_api_cxx.cpp compiles the same file
 * as C++; both build with -Wall -Wextra -Werror -pedantic. The seed of the random
 * input is printed; NQ_TEST_SEED=<seed> reproduces a run. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nexusquant.h"

static int failures = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, #cond, \
                    nq_last_error());                                                              \
            ++failures;                                                                            \
        }                                                                                          \
    } while (0)

static uint64_t rng_state;

static uint64_t next_u64(void) {
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static double next_gauss(void) {
    const double two_pi = 6.283185307179586;
    double u1 = ((double)(next_u64() >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (double)(next_u64() >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(two_pi * u2);
}

/* SNR in dB of rows [lo, hi) of every head, [H][rows][D] arrays. */
static double snr(const float *ref, const float *got, uint32_t H, uint32_t rows, uint32_t D, uint32_t lo, uint32_t hi) {
    double s = 0.0, n = 0.0;
    uint32_t h, t, d;
    for (h = 0; h < H; ++h)
        for (t = lo; t < hi; ++t)
            for (d = 0; d < D; ++d) {
                const size_t i = ((size_t)h * rows + t) * D + d;
                const double e = (double)ref[i] - (double)got[i];
                s += (double)ref[i] * ref[i];
                n += e * e;
            }
    return 10.0 * log10(s / n);
}

static void contiguous_desc(nq_kv_desc *kv, float *k, float *v, uint32_t tokens, uint32_t dim) {
    nq_kv_desc_init(kv);
    kv->dtype = NQ_DTYPE_F32;
    kv->num_tokens = tokens;
    kv->k = k;
    kv->v = v;
    nq_layout_contiguous(&kv->k_layout, tokens, dim);
    kv->v_layout = kv->k_layout;
}

int main(void) {
    const uint32_t H = 2, D = 64, T = 100;
    const size_t n = (size_t)H * T * D;
    const char *env = getenv("NQ_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 0) : ((uint64_t)time(NULL) * 2654435761u) ^ (uint64_t)clock();
    float *k = (float *)malloc(n * sizeof(float));
    float *v = (float *)malloc(n * sizeof(float));
    float *k_out = (float *)malloc(n * sizeof(float));
    float *v_out = (float *)malloc(n * sizeof(float));
    float *k_again = (float *)malloc(n * sizeof(float));
    float *v_again = (float *)malloc(n * sizeof(float));
    nq_config cfg;
    nq_context *ctx = NULL;
    nq_kv_desc kv, out;
    nq_block *blk = NULL, *back = NULL;
    nq_block_info info;
    nq_sequence *seq = NULL;
    nq_preset preset = NQ_PRESET_CUSTOM;
    size_t bound = 0, arch_cap = 0, written = 0, i;
    uint64_t d0 = 0, d1 = 0;
    unsigned char *arch;
    int64_t positions[4];

    rng_state = seed * 0x9e3779b97f4a7c15ull + 0x6a09e667f3bcc909ull; /* spread nearby seeds apart */
    rng_state ^= rng_state >> 31;
    if (!rng_state) rng_state = 1;
    printf("test_c_api: NQ_TEST_SEED=%llu\n", (unsigned long long)seed);
    for (i = 0; i < n; ++i) {
        k[i] = (float)next_gauss();
        v[i] = (float)next_gauss();
    }
    CHECK(nq_version_number() == NQ_VERSION_NUMBER);
    CHECK(nq_preset_from_name("Balanced", &preset) == NQ_OK && preset == NQ_PRESET_BALANCED);

    nq_config_init(&cfg);
    cfg.num_kv_heads = H;
    cfg.head_dim = D;
    cfg.rope.mode = NQ_ROPE_NONE;
    CHECK(nq_context_create(&cfg, &ctx) == NQ_OK);
    if (!ctx) return 1;

    contiguous_desc(&kv, k, v, T, D);
    CHECK(nq_compress_bound(ctx, &kv, &bound) == NQ_OK);
    CHECK(nq_compress_kv(ctx, &kv, NULL, NULL, &blk) == NQ_OK);
    if (!blk) return 1;
    memset(&info, 0, sizeof info);
    info.size = sizeof info;
    CHECK(nq_block_get_info(blk, &info) == NQ_OK);
    CHECK(info.tokens_in == T && info.tokens_kept == T);
    CHECK(info.resident_bytes <= bound); /* the preset may choose fewer bits than the bound plans */
    CHECK(info.k_bits == 3 && info.v_bits == 2);
    CHECK(info.ratio > 1.5); /* a short block: 36 of its 100 tokens are fp16 */
    CHECK(fabs(info.ratio - (double)info.original_bytes / (double)info.resident_bytes) < 1e-12);

    /* Decode everything: coded rows within the codec's error, fp16 rows to fp16 rounding. */
    contiguous_desc(&out, k_out, v_out, T, D);
    CHECK(nq_decode(ctx, blk, 0, T, &out, NULL) == NQ_OK);
    CHECK(snr(k, k_out, H, T, D, info.fp16_sinks, T - info.fp16_window) > 14.0);
    CHECK(snr(v, v_out, H, T, D, info.fp16_sinks, T - info.fp16_window) > 9.0);
    CHECK(snr(k, k_out, H, T, D, 0, info.fp16_sinks) > 60.0);
    CHECK(snr(v, v_out, H, T, D, T - info.fp16_window, T) > 60.0);

    /* Archive round trip: the identical block. */
    CHECK(nq_block_serialize_bound(blk, &arch_cap) == NQ_OK);
    arch = (unsigned char *)malloc(arch_cap);
    CHECK(nq_block_serialize(ctx, blk, arch, arch_cap, &written) == NQ_OK);
    CHECK(written > 0 && written <= arch_cap);
    CHECK(nq_block_deserialize(ctx, arch, written, &back) == NQ_OK);
    CHECK(back != NULL);
    if (back) {
        CHECK(nq_block_digest(blk, &d0) == NQ_OK && nq_block_digest(back, &d1) == NQ_OK && d0 == d1);
        contiguous_desc(&out, k_again, v_again, T, D);
        CHECK(nq_decode_block(ctx, back, 0, T, &out, NULL) == NQ_OK); /* nq_decode's primary name */
        CHECK(memcmp(k_again, k_out, n * sizeof(float)) == 0);
        CHECK(memcmp(v_again, v_out, n * sizeof(float)) == 0);
    }
    arch[written / 2] ^= 0x20;
    {
        nq_block *bad = NULL;
        CHECK(nq_block_deserialize(ctx, arch, written, &bad) == NQ_ERR_CORRUPT);
        CHECK(bad == NULL);
    }

    /* A sequence of two chunks: positions continue, a range crosses the boundary. */
    CHECK(nq_sequence_create(ctx, 0, &seq) == NQ_OK);
    if (seq) {
        contiguous_desc(&kv, k, v, T, D);
        CHECK(nq_sequence_append(seq, &kv, NULL, NULL) == NQ_OK);
        kv.start_position = T;
        CHECK(nq_sequence_append(seq, &kv, NULL, NULL) == NQ_OK);
        CHECK(nq_sequence_num_blocks(seq) == 2);
        CHECK(nq_sequence_positions(seq, 1, T - 2, T + 2, positions) == NQ_OK);
        CHECK(positions[0] == T - 2 && positions[3] == T + 1);
        contiguous_desc(&out, k_again, v_again, 4, D);
        CHECK(nq_sequence_decode(seq, T - 2, T + 2, &out, NULL) == NQ_OK);
        CHECK(nq_sequence_append(seq, &kv, NULL, NULL) == NQ_ERR_INVALID_ARGUMENT); /* positions repeat */
    }

    /* An error names the argument at fault; outputs stay NULL. */
    {
        nq_block *none = blk;
        CHECK(nq_compress_kv(ctx, NULL, NULL, NULL, &none) == NQ_ERR_INVALID_ARGUMENT);
        CHECK(none == NULL);
        CHECK(strstr(nq_last_error(), "kv") != NULL);
        CHECK(strstr(nq_status_string(NQ_ERR_TRUNCATED), "TRUNCATED") != NULL);
    }

    nq_sequence_free(seq);
    nq_block_free(back);
    nq_block_free(blk);
    nq_context_free(ctx);
    nq_context_free(NULL);
    free(arch);
    free(k);
    free(v);
    free(k_out);
    free(v_out);
    free(k_again);
    free(v_again);
    if (failures) fprintf(stderr, "test_c_api: %d check(s) failed (NQ_TEST_SEED=%llu)\n", failures,
                          (unsigned long long)seed);
    else
        printf("test_c_api: all checks passed\n");
    return failures ? 1 : 0;
}
