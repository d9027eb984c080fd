// One block's plan, built once per block before any of its data is read
// (make_plan in src/api/compress.cpp): the resident header (codec, bits, shape, RoPE
// spec, positions encoding, fp16 sinks/window), its geometry, and the eviction budget.
// Selection on the host (select_tokens), on the device (BatchItem's sel_* fields) and
// the block image all follow this one plan.
#pragma once
#include <cstdint>

#include "../context.h"

namespace nq {

// What eviction keeps of T input tokens: the `sinks` leading tokens whose positions are
// below the layer's sink limit, the `window` last tokens, and keep - sinks - window of
// the tokens between by score (evict.cpp).
struct EvictBudget {
    uint32_t sinks;
    uint32_t window;
    uint32_t keep;  // tokens per head (before paged rounding)
    bool evicting;
};
EvictBudget evict_budget(const LayerParams &lp, uint32_t T, uint32_t sinks);

struct BlockPlan {
    LayerParams lp;      // the layer's parameters, as this chunk applies them
    BlockHeader h;       // the header the block will carry (h.tokens_kept: planned)
    BlockGeometry g;     // sections and total bytes of h
    EvictBudget budget;  // the eviction budget behind h.tokens_kept
    bool evicting;       // h.tokens_kept < h.tokens_in
};

}  // namespace nq
