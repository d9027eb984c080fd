// Reading and writing one head vector of an engine's K/V memory through an nq_layout.
// The layout has been validated (validate.cpp) before any of this runs.
#pragma once
#include <cstdint>
#include <cstring>

#include "half.h"
#include "nexusquant.h"

namespace nq {

inline int64_t layout_offset(const nq_layout &l, uint32_t h, uint32_t t) {
    if (l.kind == NQ_LAYOUT_PAGED) {
        int64_t page = l.page_table[t / l.page_size];
        return page * l.stride_page + (int64_t)(t % l.page_size) * l.stride_token + (int64_t)h * l.stride_head;
    }
    return (int64_t)h * l.stride_head + (int64_t)t * l.stride_token;
}

inline int64_t layout_dim_stride(const nq_layout &l) { return l.stride_dim ? l.stride_dim : 1; }

// Loads head_dim elements of (h, t) as float.
inline void load_row(const void *base, nq_dtype dt, const nq_layout &l, uint32_t h, uint32_t t, uint32_t head_dim,
                     float *dst) {
    const int64_t off = layout_offset(l, h, t), sd = layout_dim_stride(l);
    switch (dt) {
    case NQ_DTYPE_F16: {
        const uint16_t *p = static_cast<const uint16_t *>(base) + off;
        for (uint32_t d = 0; d < head_dim; ++d) {
            uint16_t v;
            std::memcpy(&v, p + d * sd, 2);
            dst[d] = f16_to_f32(v);
        }
        break;
    }
    case NQ_DTYPE_BF16: {
        const uint16_t *p = static_cast<const uint16_t *>(base) + off;
        for (uint32_t d = 0; d < head_dim; ++d) {
            uint16_t v;
            std::memcpy(&v, p + d * sd, 2);
            dst[d] = bf16_to_f32(v);
        }
        break;
    }
    default: {
        const float *p = static_cast<const float *>(base) + off;
        for (uint32_t d = 0; d < head_dim; ++d) std::memcpy(&dst[d], p + d * sd, 4);
        break;
    }
    }
}

// Stores head_dim floats into (h, t), rounding to the destination dtype.
inline void store_row(void *base, nq_dtype dt, const nq_layout &l, uint32_t h, uint32_t t, uint32_t head_dim,
                      const float *src) {
    const int64_t off = layout_offset(l, h, t), sd = layout_dim_stride(l);
    switch (dt) {
    case NQ_DTYPE_F16: {
        uint16_t *p = static_cast<uint16_t *>(base) + off;
        for (uint32_t d = 0; d < head_dim; ++d) {
            uint16_t v = f32_to_f16(src[d]);
            std::memcpy(p + d * sd, &v, 2);
        }
        break;
    }
    case NQ_DTYPE_BF16: {
        uint16_t *p = static_cast<uint16_t *>(base) + off;
        for (uint32_t d = 0; d < head_dim; ++d) {
            uint16_t v = f32_to_bf16(src[d]);
            std::memcpy(p + d * sd, &v, 2);
        }
        break;
    }
    default: {
        float *p = static_cast<float *>(base) + off;
        for (uint32_t d = 0; d < head_dim; ++d) std::memcpy(p + d * sd, &src[d], 4);
        break;
    }
    }
}

}  // namespace nq
