// Plain-data descriptions of the work the GPU kernels do, built on the host (from the
// plan and the caller's descriptors) and read by the kernels. Pointers are device
// pointers.
#pragma once
#include <cstdint>

#include "gpu_runtime.h"
#include "../../src/core/format.h"

namespace nq {
namespace gpu {

// (cos, sin) of one frequency of one position.
struct RopeCS {
    float c, s;
};

// Where element (h, t, d) lives: as nq_layout, with the page table in device memory.
struct Layout {
    const int32_t *pages;  // paged: ceil(tokens/page_size) page indices; NULL: strided
    int64_t stride_head, stride_token, stride_dim, stride_page;
    uint32_t page_size;
    uint32_t reserved;
};

__device__ __forceinline__ int64_t layout_offset(const Layout &l, uint32_t h, uint32_t t) {
    if (l.pages) {
        const int64_t page = l.pages[t / l.page_size];
        return page * l.stride_page + (int64_t)(t % l.page_size) * l.stride_token + (int64_t)h * l.stride_head;
    }
    return (int64_t)h * l.stride_head + (int64_t)t * l.stride_token;
}

constexpr uint32_t kMetaUnits = 128 + 16 * kNumSections;  // per item: the header bytes + one gap (< 16 bytes) per section

// One item of a compress batch: one block to write.
struct EncodeItem {
    const void *k;
    const void *v;
    Layout kl, vl;
    uint8_t *dst;                // the block image
    const uint32_t *positions;   // absolute position of every input token, or NULL: start_position + t
    const uint32_t *kept;        // [kept_rows][K] input indices, or NULL: every token
    const RopeCS *rope;          // inverse tables [position][rotary_dims / 2] when unrotating
    uint64_t off[kNumSections + 1];  // section offsets, then the total
    uint64_t gap_begin[kNumSections], gap_end[kNumSections];  // byte ranges to zero (padding)
    uint64_t row_begin;          // first work row: items hold 2 * H * K rows (K rows, then V rows)
    uint64_t pos_begin;          // first position entry: pos_rows * K entries
    uint32_t start_position, first_position;
    uint32_t H, D, T, K;
    uint32_t s_end, w_begin, coded, raw;
    uint32_t kept_rows, pos_rows, pos_bytes;
    uint32_t dtype, codec, k_bits, v_bits;
    uint32_t unrotate, pairing, rotary_dims;
    float k_alpha, v_alpha;
    uint32_t key_mean;           // 1: keys are coded minus the head's mean (FORMAT.md 1.8)
    uint32_t mean_begin;         // first (item, head) of the key-mean launches; counts centred items only
    uint32_t run_begin;          // first (item, head, run) of the key-mean run launch (FORMAT.md 1.8)
    uint32_t runs;               // key-mean runs per head: ceil(coded / kKeyMeanRun)
    double *mean_runs;           // workspace: the runs' float64 sums [H][runs][D]
    uint8_t header[128];
};

// One decode launch (one block, a token range, one chunk of the destination pages).
struct DecodeParams {
    const uint8_t *src;          // the block image
    void *k;
    void *v;
    Layout kl, vl;
    const RopeCS *rope;          // forward tables [position][rotary_dims / 2] when rotating
    uint64_t off[kNumSections + 1];  // section offsets, then the total
    uint32_t begin;              // first block token of the launch
    uint32_t out_begin;          // its destination token index
    uint32_t count;              // tokens of the launch
    uint32_t page_base;          // destination page-table index of pages[0]
    uint32_t H, D, K;
    uint32_t s_end, w_begin, coded, raw;
    uint32_t pos_rows, pos_bytes, first_position;
    uint32_t dtype, codec, k_bits, v_bits;
    uint32_t rotate, pairing, rotary_dims;
    uint32_t key_mean;           // 1: decoded keys get the head's mean (k_mean section) added back
};

// Device-side token selection of one item (sinks [0, lo) and window [hi, T) are kept,
// m of [lo, hi) by score).
struct SelectItem {
    const float *scores;         // device scores (GIVEN), or NULL: key-norm scores in `norm`
    int64_t stride_head, stride_token;
    float *norm;                 // [H][T] scratch for key-norm scores / summed scores
    uint32_t *kept;              // [rows][K] output
    const void *k;               // for key-norm scores
    Layout kl;
    uint32_t H, D, T, K, dtype;
    uint32_t lo, hi, m;
    uint32_t rows;               // H (per head) or 1 (head-shared: scores summed over heads)
    uint32_t row_begin;          // first selection row of this item
    uint32_t key_norm;           // 1: `norm` rows are computed from the keys' norms
    uint32_t reserved;
};

// Observation-window query scores of one item (cpu_scores' NQ_SCORES_QUERIES, the same
// operations in the same order): per query head, softmax of each query over the keys
// it sees, summed over the queries, max-pooled, then summed over the query heads of a
// KV head into norm[h][t].
struct QueryParams {
    const void *q;               // device queries
    int64_t q_stride_head, q_stride_token, q_stride_dim;
    const void *k;
    Layout kl;
    float *logits;               // [Hq][T] scratch (probabilities, then pooled sums)
    float *acc;                  // [Hq][T] scratch
    float *norm;                 // [H][T] output
    float inv_sqrt_d;
    uint32_t q_dtype, k_dtype;
    uint32_t Hq, H, D, T, W;
    uint32_t half_pool;
};

}  // namespace gpu
}  // namespace nq
