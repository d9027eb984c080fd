/* Compresses and decodes a small KV cache through the installed library. */
#include <nexusquant.h>
#include <stdio.h>
#include <string.h>

int main(void) {
    enum { H = 2, T = 64, D = 64 };
    static float k[H * T * D], v[H * T * D], k2[H * T * D], v2[H * T * D];
    for (int i = 0; i < H * T * D; ++i) {
        k[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
        v[i] = (float)((i * 53) % 97) / 48.0f - 1.0f;
    }
    nq_config cfg;
    nq_config_init(&cfg);
    cfg.head_dim = D;
    cfg.num_kv_heads = H;
    cfg.rope.mode = NQ_ROPE_NONE;
    nq_context *ctx = NULL;
    if (nq_context_create(&cfg, &ctx) != NQ_OK) return fprintf(stderr, "%s\n", nq_last_error()), 1;
    nq_kv_desc kv;
    nq_kv_desc_init(&kv);
    kv.dtype = NQ_DTYPE_F32;
    kv.num_tokens = T;
    kv.k = k;
    kv.v = v;
    nq_layout_contiguous(&kv.k_layout, T, D);
    kv.v_layout = kv.k_layout;
    nq_block *blk = NULL;
    if (nq_compress_kv(ctx, &kv, NULL, NULL, &blk) != NQ_OK) return fprintf(stderr, "%s\n", nq_last_error()), 1;
    nq_kv_desc out = kv;
    out.k = k2;
    out.v = v2;
    if (nq_decode(ctx, blk, 0, T, &out, NULL) != NQ_OK) return fprintf(stderr, "%s\n", nq_last_error()), 1;
    double err = 0, sig = 0;
    for (int i = 0; i < H * T * D; ++i) {
        err += (double)(k[i] - k2[i]) * (k[i] - k2[i]);
        sig += (double)k[i] * k[i];
    }
    nq_block_info info;
    memset(&info, 0, sizeof info);
    info.size = sizeof info;
    nq_block_get_info(blk, &info);
    printf("nexusquant %s: ratio %.2f, relative error %.4f\n", nq_version_string(), info.ratio, err / sig);
    nq_block_free(blk);
    nq_context_free(ctx);
    return err / sig < 0.05 ? 0 : 1;
}
