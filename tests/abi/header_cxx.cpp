// Compiled (not run) by CTest with -Wall -Wextra -Werror -pedantic as C++11 and C++17:
// the public header must be clean C++ and give its functions C linkage.
#include "nexusquant.h"
#include "nexusquant.h"

#include <type_traits>

static_assert(std::is_standard_layout<nq_config>::value, "nq_config is plain data");
static_assert(std::is_trivially_copyable<nq_kv_desc>::value, "nq_kv_desc is plain data");
static_assert(std::is_trivially_copyable<nq_block_info>::value, "nq_block_info is plain data");
static_assert(std::is_trivially_copyable<nq_attention_desc>::value, "nq_attention_desc is plain data");
static_assert(sizeof(nq_status) == sizeof(int), "enums are int-sized");
// Every int a C caller may store is a valid value of the enum in C++ (no UB on loads).
static_assert(std::is_same<std::underlying_type<nq_dtype>::type, int>::value, "enums have int as their base");
static_assert(std::is_same<std::underlying_type<nq_status>::type, int>::value, "enums have int as their base");

extern "C" {
// Redeclaring with C linkage must agree with the header's declarations.
typedef nq_status (*create_fn)(const nq_config *, nq_context **);
}

int nq_header_cxx_uses_the_api();
int nq_header_cxx_uses_the_api() {
    create_fn f = &nq_context_create;
    nq_config cfg;
    nq_config_init(&cfg);
    return f != nullptr && cfg.size == sizeof cfg ? NQ_OK : NQ_ERR_INTERNAL;
}
