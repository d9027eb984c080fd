// The header fields that nq_block_get_info and nq_block_peek both report, copied from a
// parsed header into either output struct (they name these fields alike).
#pragma once
#include "../core/format.h"
#include "nexusquant.h"

namespace nq {

template <class Info> void header_info_fields(const BlockHeader &h, Info &i) {
    i.layer = h.layer;
    i.num_heads = h.num_heads;
    i.head_dim = h.head_dim;
    i.tokens_in = h.tokens_in;
    i.tokens_kept = h.tokens_kept;
    i.k_bits = h.k_bits;
    i.v_bits = h.v_bits;
    i.codec = (nq_codec)h.codec;
    i.evict_mode = (nq_evict_mode)h.evict_mode;
    i.rope_mode = (nq_rope_mode)h.rope_mode;
    i.fp16_sinks = h.fp16_sinks;
    i.fp16_window = h.fp16_window;
    i.positions_per_head = (h.flags & kFlagPositionsPerHead) ? 1 : 0;
}

}  // namespace nq
