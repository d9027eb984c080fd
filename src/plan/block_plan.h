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

// Tokens kept per head under budget b (what select_tokens keeps; the paged mode rounds
// to whole pages).
uint32_t planned_kept(const nq_context *ctx, const nq_kv_desc &kv, const EvictBudget &b);

// Keeps the budget's sinks and window and the top tokens between by score (evict.cpp).
// Writes kept[rows][*num_kept] (input indices, increasing) and returns rows in *rows.
struct Workspace;
nq_status select_tokens(const nq_context *ctx, const nq_kv_desc &kv, const EvictBudget &b, const float *scores,
                        uint32_t *kept, uint32_t *num_kept, uint32_t *rows, Workspace &ws);

}  // namespace nq
