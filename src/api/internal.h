// The handles' objects (src/context.h), the sequence handle, and helpers shared by the
// API files.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../context.h"
#include "error.h"
#include "nexusquant.h"

struct nq_sequence {
    nq_context *ctx;
    uint32_t layer;
    nq_block **blocks;
    uint64_t *token_end;  // cumulative kept tokens after each block
    size_t count, capacity;
    int64_t last_position;
};

namespace nq {

// Whether `n` can be the `size` of a caller's `type` (whose size in this library is
// own_size): this size, an older caller's (the end of one of the fields, at least the
// fields without defaults), or a newer caller's (larger, at most 4 KB). Anything else
// is an uninitialised size: refused before any byte past the `size` field is read.
nq_status check_struct_size(const char *type, size_t n, size_t own_size, bool output);

// Copies a caller's size-tagged struct over `dst` (which holds defaults). Rejects a
// size that no version of the struct has, and unknown non-zero trailing bytes.
template <class T> nq_status copy_sized(const T *src, T *dst, const char *name) {
    size_t n;
    std::memcpy(&n, src, sizeof(size_t));
    NQ_TRY(check_struct_size(name, n, sizeof(T), false));
    if (n > sizeof(T)) {
        const unsigned char *p = reinterpret_cast<const unsigned char *>(src);
        for (size_t i = sizeof(T); i < n; ++i)
            if (p[i] != 0)
                return fail(NQ_ERR_UNSUPPORTED,
                            "%s has non-zero bytes at offset %zu, past the %zu bytes this library knows (newer header?)",
                            name, i, sizeof(T));
        n = sizeof(T);
    }
    std::memcpy(reinterpret_cast<void *>(dst), src, n);
    dst->size = sizeof(T);
    return NQ_OK;
}

// Writes an output struct, at most as many bytes as the caller's size says.
template <class T> nq_status write_sized(const T &val, T *dst, const char *name) {
    size_t n;
    std::memcpy(&n, dst, sizeof(size_t));
    NQ_TRY(check_struct_size(name, n, sizeof(T), true));
    if (n > sizeof(T)) n = sizeof(T);
    T tmp = val;
    tmp.size = n;
    std::memcpy(reinterpret_cast<void *>(dst), &tmp, n);
    return NQ_OK;
}

uint32_t dtype_bytes(nq_dtype t);
const char *dtype_name(nq_dtype t);

// Validates a K/V descriptor against the context for compress (is_output = false) or
// decode into it (is_output = true). `which` names the argument in messages.
nq_status validate_kv(const nq_context *ctx, const nq_kv_desc &kv, bool is_output, const char *which);
// Decode outputs: refuses K and V layouts that share an element (the writes would race
// and the last one win).
nq_status validate_outputs_disjoint(const nq_context *ctx, const nq_kv_desc &out, const char *which);
nq_status validate_scores(const nq_context *ctx, const nq_kv_desc &kv, const nq_score_desc &sc);

// Allocates a block handle (and its image unless `external` is given).
nq_status block_create(const MemoryHooks &mem, const BlockHeader &h, void *external, size_t external_cap,
                       nq_block **out);
// The same with the image in `memory` of `device` (GPU blocks).
nq_status block_create_in(const MemoryHooks &mem, const BlockHeader &h, nq_memory memory, int32_t device,
                          void *external, size_t external_cap, nq_block **out);

// Whether a block's shape (heads, head_dim) is the context's: decode, deserialise and
// attention read blocks of the context's shape only.
inline bool shape_matches(const nq_context *ctx, const BlockHeader &h) {
    return h.head_dim == ctx->cfg.head_dim && h.num_heads == ctx->cfg.num_kv_heads;
}

// Resident header for compressing kv with lp (tokens_kept etc. filled by the caller).
BlockHeader base_header(const nq_context *ctx, const nq_kv_desc &kv);

}  // namespace nq
