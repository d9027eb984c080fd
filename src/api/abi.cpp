// sizeof/offsetof of the public structs, for bindings that keep copies of them.
#include <cstddef>
#include <cstring>

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

}  // namespace

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
