// sizeof/offsetof of the public structs, for bindings that keep copies of them.
#include <cstddef>
#include <cstring>

#include "error.h"
#include "nexusquant.h"

namespace {

struct Entry {
    const char *type;
    const char *field;  // nullptr: the struct itself
    size_t value;
};

#define NQ_ABI_STRUCT(T) {#T, nullptr, sizeof(T)},
#define NQ_ABI_FIELD(T, F) {#T, #F, offsetof(T, F)},
const Entry kTable[] = {
#include "abi_table.inc"
};
#undef NQ_ABI_STRUCT
#undef NQ_ABI_FIELD

// The smallest prefix of each input struct a caller can send: the fields that have no
// default. Every byte past it may be left out by a caller built against an older,
// smaller struct; a size below it can only be an uninitialised `size`. Output structs
// may be any prefix that holds one field.
struct MinSize {
    const char *type;
    size_t bytes;
    bool has_init;  // a *_init function sets the size
};
const MinSize kMinSizes[] = {
    {"nq_config", offsetof(nq_config, num_q_heads), true},      // head_dim, num_kv_heads
    {"nq_kv_desc", offsetof(nq_kv_desc, positions), true},      // dtype .. v_layout
    {"nq_score_desc", offsetof(nq_score_desc, queries), true},  // kind, memory, given scores
    {"nq_attention_desc", 0, true},                             // no older version: its full size
    {"nq_block_info", 0, false},
    {"nq_block_peek_info", 0, false},
    {"nq_layer_params", 0, false},
};

// A caller's struct larger than this is no struct of this API: a `size` left
// uninitialised. It bounds how far past the library's struct the unknown-bytes check
// reads.
constexpr size_t kMaxStructBytes = 4096;

}  // namespace

namespace nq {

nq_status check_struct_size(const char *type, size_t n, size_t own_size, bool output) {
    const MinSize *ms = nullptr;
    for (const MinSize &m : kMinSizes)
        if (std::strcmp(m.type, type) == 0) ms = &m;
    const bool has_init = !ms || ms->has_init;
    size_t min = output ? sizeof(size_t) + 1 : (ms && ms->bytes ? ms->bytes : own_size);
    bool ok = false;
    if (n == own_size) {
        ok = true;
    } else if (n > own_size) {
        // A newer caller's struct: its sizeof is a multiple of the size_t alignment.
        ok = n <= kMaxStructBytes && n % alignof(size_t) == 0;
    } else if (n >= min) {
        // An older caller's struct ends where one of the library's fields begins;
        // a size inside a field is no struct's size.
        for (const Entry &e : kTable)
            if (e.field && std::strchr(e.field, '.') == nullptr && e.value == n && std::strcmp(e.type, type) == 0)
                ok = true;
    }
    if (ok) return NQ_OK;
    if (has_init)
        return fail(NQ_ERR_INVALID_ARGUMENT,
                    "%s.size is %zu: not the size of any %s (this library's is %zu); call %s_init to set it", type, n,
                    type, own_size, type);
    return fail(NQ_ERR_INVALID_ARGUMENT, "%s.size is %zu: not the size of any %s; set it to sizeof(%s) (%zu)", type, n,
                type, type, own_size);
}

}  // namespace nq

extern "C" NQ_API size_t nq_abi_sizeof(const char *type) {
    if (!type) return (size_t)-1;
    for (const Entry &e : kTable)
        if (!e.field && std::strcmp(e.type, type) == 0) return e.value;
    return (size_t)-1;
}

extern "C" NQ_API size_t nq_abi_offsetof(const char *type, const char *field) {
    if (!type || !field) return (size_t)-1;
    for (const Entry &e : kTable)
        if (e.field && std::strcmp(e.type, type) == 0 && std::strcmp(e.field, field) == 0) return e.value;
    return (size_t)-1;
}
