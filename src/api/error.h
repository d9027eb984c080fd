// Per-thread last-error message and helpers that set it.
#pragma once
#include "nexusquant.h"

namespace nq {

// Sets this thread's message (printf-style) and returns `status`.
nq_status fail(nq_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

void clear_error();

}  // namespace nq

// Returns from the enclosing function when `expr` is not NQ_OK.
#define NQ_TRY(expr)                          \
    do {                                      \
        nq_status nq_try_status_ = (expr);    \
        if (nq_try_status_ != NQ_OK) return nq_try_status_; \
    } while (0)
