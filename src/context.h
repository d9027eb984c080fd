// The objects behind the context and block handles: what the API layer builds and every
// backend reads (through src/backend.h). The API's own helpers are in api/internal.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "api/error.h"
#include "core/format.h"
#include "core/rope.h"
#include "nexusquant.h"

namespace nq {

// Resolved per-layer parameters.
struct LayerParams {
    uint32_t k_bits, v_bits;
    float evict_fraction;
    uint32_t sink_tokens, recent_window, fp16_sinks, fp16_window;
    bool adaptive = false;  // bits chosen per block from the data (src/plan/bit_choice.h)
};

struct MemoryHooks {
    nq_allocator a;
    void *alloc(size_t bytes, size_t align, nq_memory mem = NQ_MEMORY_HOST, int32_t dev = 0) const;
    void release(void *p, nq_memory mem = NQ_MEMORY_HOST, int32_t dev = 0) const;
};

// Memory kinds (nq_memory values 0..kMemoryKinds-1): the slots of the backend table.
constexpr int kMemoryKinds = 3;

}  // namespace nq

struct nq_context {
    nq_config cfg;                    // resolved copy (overrides points into `overrides`)
    nq_layer_override *overrides;     // owned copy
    nq::MemoryHooks mem;
    nq::RopeSpec rope;
    nq_backend backend;
    // Each backend's state, by the memory kind it serves (src/backend.h): the CPU's
    // instruction set and thread pool, a GPU backend's RoPE tables.
    void *backend_state[nq::kMemoryKinds];
    // Bits from the data (src/plan/bit_choice.h): set when neither k_bits nor v_bits was
    // given and a preset or target ratio supplies them; layers whose override sets bits
    // keep those.
    bool adaptive_bits;
    uint32_t bits_extra;              // bit_range's extra
    float bits_target;                // distortion target
    float bits_floor;                 // ratio floor
};

struct nq_block {
    nq::BlockHeader h;
    nq::BlockGeometry g;
    uint8_t *data;      // resident image (h.total_bytes)
    bool owns_data;
    nq::MemoryHooks mem;
    nq_memory memory;
    int32_t device;
    int64_t max_position;  // device blocks: no kept position exceeds it (-1: not known)
};

namespace nq {
LayerParams layer_params(const nq_context *ctx, uint32_t layer);
}  // namespace nq
