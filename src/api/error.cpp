#include "error.h"

#include <cstdarg>
#include <cstdio>

namespace nq {
namespace {
thread_local char t_message[512] = "";
}

nq_status fail(nq_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(t_message, sizeof t_message, fmt, ap);
    va_end(ap);
    return status;
}

void clear_error() { t_message[0] = '\0'; }

}  // namespace nq

extern "C" NQ_API const char *nq_last_error(void) { return nq::t_message; }

extern "C" NQ_API const char *nq_status_string(nq_status s) {
    switch (s) {
    case NQ_OK: return "NQ_OK: success";
    case NQ_ERR_INVALID_ARGUMENT: return "NQ_ERR_INVALID_ARGUMENT: an argument or field is invalid";
    case NQ_ERR_UNSUPPORTED: return "NQ_ERR_UNSUPPORTED: valid but not supported";
    case NQ_ERR_OUT_OF_MEMORY: return "NQ_ERR_OUT_OF_MEMORY: allocation failed";
    case NQ_ERR_BUFFER_TOO_SMALL: return "NQ_ERR_BUFFER_TOO_SMALL: the buffer is too small";
    case NQ_ERR_CORRUPT: return "NQ_ERR_CORRUPT: data fails its checksum or is inconsistent";
    case NQ_ERR_TRUNCATED: return "NQ_ERR_TRUNCATED: data ends early";
    case NQ_ERR_VERSION: return "NQ_ERR_VERSION: unknown format or version";
    case NQ_ERR_BACKEND_UNAVAILABLE: return "NQ_ERR_BACKEND_UNAVAILABLE: backend not built or no device";
    case NQ_ERR_DEVICE: return "NQ_ERR_DEVICE: a device call failed";
    case NQ_ERR_OUT_OF_RANGE: return "NQ_ERR_OUT_OF_RANGE: index or range outside the object";
    case NQ_ERR_INTERNAL: return "NQ_ERR_INTERNAL: internal error";
    }
    return "NQ_ERR_UNKNOWN: not a status code";
}
