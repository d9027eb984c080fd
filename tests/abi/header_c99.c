/* Compiled (not run) by CTest with -std=c99 -Wall -Wextra -Werror -pedantic: the public
 * header must be clean C99. Included twice to check its include guard. */
#include "nexusquant.h"
#include "nexusquant.h"

/* Every public type is complete (or opaque where it must be) and usable from C. */
int nq_header_c99_uses_every_type(void);
int nq_header_c99_uses_every_type(void) {
    nq_config cfg;
    nq_kv_desc kv;
    nq_score_desc sc;
    nq_layer_params lp;
    nq_block_info info;
    nq_layout layout;
    nq_rope rope;
    nq_allocator alloc;
    nq_layer_override ov;
    nq_buffer buf;
    nq_attention_desc att;
    nq_context *ctx = NULL;
    nq_block *blk = NULL;
    nq_sequence *seq = NULL;
    nq_status st = NQ_OK;
    nq_dtype dt = NQ_DTYPE_F16;
    nq_memory mem = NQ_MEMORY_HOST;
    nq_backend be = NQ_BACKEND_AUTO;
    nq_cpu_isa isa = NQ_ISA_AUTO;
    nq_preset preset = NQ_PRESET_CONSERVATIVE;
    nq_codec codec = NQ_CODEC_E8;
    nq_evict_mode em = NQ_EVICT_PER_HEAD;
    nq_rope_mode rm = NQ_ROPE_REMOVE;
    nq_rope_pairing rp = NQ_ROPE_SPLIT_HALF;
    nq_rope_scaling rs = NQ_ROPE_SCALING_NONE;
    nq_layout_kind lk = NQ_LAYOUT_STRIDED;
    nq_score_kind sk = NQ_SCORES_KEY_NORM;
    (void)cfg; (void)kv; (void)sc; (void)lp; (void)info; (void)layout; (void)rope; (void)alloc;
    (void)ov; (void)buf; (void)att; (void)ctx; (void)blk; (void)seq; (void)dt; (void)mem; (void)be; (void)isa;
    (void)preset; (void)codec; (void)em; (void)rm; (void)rp; (void)rs; (void)lk; (void)sk;
    return (int)st + NQ_VERSION_NUMBER + NQ_PRESET_AGGRESSIVE;
}
