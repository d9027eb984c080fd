// The CPU backend's entry in the backend table (src/backend.h): host memory, its
// per-context state (instruction set and thread pool), and its entry points.
#include <cstdlib>
#include <new>

#include "../../src/attention/attention.h"
#include "../../src/backend.h"
#include "cpu_dispatch.h"
#include "cpu_internal.h"
#include "thread_pool.h"

namespace nq {

namespace {

nq_status cpu_state_create(nq_context *ctx, void **out) {
    *out = nullptr;
    void *p = ctx->mem.alloc(sizeof(CpuState), alignof(CpuState));
    if (!p) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating the CPU backend state (%zu bytes) failed", sizeof(CpuState));
    CpuState *st = new (p) CpuState();
    st->isa = cpu_isa_resolve(ctx->cfg.cpu_isa, std::getenv("NQ_CPU_ISA"));
    st->pool = nullptr;
    if (nq_status s = thread_pool_create(ctx->mem, ctx->cfg.num_threads, &st->pool); s != NQ_OK) {
        st->~CpuState();
        ctx->mem.release(p);
        return s;
    }
    *out = st;
    return NQ_OK;
}

void cpu_state_release(nq_context *ctx, void *state) {
    if (!state) return;
    CpuState *st = static_cast<CpuState *>(state);
    thread_pool_free(st->pool);
    st->~CpuState();
    ctx->mem.release(st);
}

nq_status decode_entry(nq_context *ctx, const nq_block &b, uint32_t begin, uint32_t end, const nq_kv_desc &out,
                       void *stream) {
    return cpu_decode(ctx, b, begin, end, out, stream);
}

nq_status attention_entry(nq_context *ctx, const AttentionCall &call, void *workspace, void *) {
    return cpu_attention(ctx, call, workspace);
}

// Enough pieces per (sequence, KV head) to give every thread work, never more than 16.
uint32_t attention_splits(const nq_context *ctx, uint32_t num_seqs, uint32_t kv_heads) {
    const uint64_t items = (uint64_t)num_seqs * kv_heads;
    const uint32_t threads = ctx->cfg.num_threads ? ctx->cfg.num_threads : 1;
    if (items == 0 || items >= threads) return 1;
    uint64_t s = (threads + items - 1) / items;
    return (uint32_t)(s > 16 ? 16 : s);
}

const char *variant(const nq_context *ctx) {
    switch (cpu_isa(ctx)) {
    case NQ_ISA_AVX512: return "avx512";
    case NQ_ISA_AVX2: return "avx2";
    default: return "scalar";
    }
}

}  // namespace

const BackendOps *cpu_backend_ops() {
    static const BackendOps ops = [] {
        BackendOps o{};
        o.name = "CPU";
        o.memory = NQ_MEMORY_HOST;
        o.kind = NQ_BACKEND_CPU;
        o.state_create = cpu_state_create;
        o.state_release = cpu_state_release;
        o.scores = cpu_scores_guarded;
        o.encode = cpu_encode;
        o.decode = decode_entry;
        o.attention_workspace = cpu_attention_workspace_bytes;
        o.attention = attention_entry;
        o.attention_splits = attention_splits;
        o.workspace_align = 64;
        o.variant = variant;
        return o;
    }();
    return &ops;
}

}  // namespace nq
