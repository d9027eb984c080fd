// The hot loops of CPU attention over resident blocks (cpu_attention.cpp drives them),
// one set per instruction set (attention_avx2.cpp, attention_avx512.cpp stamp out
// attention_impl.inc).
//
// Every loop works on `rows` query rows of one KV head (the query heads of its group
// times the query tokens), held as fp32 rows of head_dim values with row stride
// head_dim, and on n consecutive kept tokens of one head of one block:
//   - coded tokens in the rotated domain: point_t = the codebook points of the token's
//     groups (docs/FORMAT.md 1.4/1.5) and s_t its bf16 scale, so the decoded vector is
//     signs * H(s_t point_t) / hadamard_block. Keys stored with RoPE kept (or none) give
//     logits <q, k_t> = s_t <H signs q, point_t> / n from the query transformed once;
//     values are summed as sum p_t s_t point_t and transformed back once per output.
//   - raw fp16 rows (sinks, window) and fp32 rows (keys decoded with their RoPE).
// No reduction order is part of the format here: attention results are compared with
// float64 references within a stated bound, not bit for bit.
//
// Like kernels.h, this header is included by translation units compiled with ISA
// flags and stays free of inline functions with external linkage.
#pragma once
#include <cstdint>

namespace nq {

struct AttnCodes {
    const uint8_t *codes;    // the first token's groups; tokens follow every code_bytes
    const uint8_t *scales;   // bf16 per token, little-endian
    const uint8_t *end;      // one past the last readable byte of the image
    uint32_t code_bytes;     // head_dim * bits / 8
    uint32_t head_dim;
    uint32_t n;              // tokens
    int codec;               // kCodecE8 / kCodecScalar
    int bits;
};

// Floats of scratch `buf` the coded kernels need for n tokens and `rows` query rows:
// n + rows rows of head_dim + ceil(head_dim / 8 / 16) * 16 floats, and 16 spare.
constexpr uint64_t attn_coded_scratch_floats(uint32_t n, uint32_t head_dim, uint32_t rows) {
    return ((uint64_t)n + rows) * (head_dim + (head_dim / 8 + 15) / 16 * 16) + 16;
}

struct AttnKernels {
    const char *name;
    // L[r * ldl + t] = s_t * <q_r, point_t>
    void (*coded_logits)(const AttnCodes &c, const float *q, uint32_t rows, float *L, uint32_t ldl, float *buf);
    // acc_r += sum_t P[r * ldp + t] * s_t * point_t
    void (*coded_accumulate)(const AttnCodes &c, const float *P, uint32_t ldp, uint32_t rows, float *acc, float *buf);
    // L[r * ldl + t] = <q_r, k_t> over fp16 rows k (row stride head_dim)
    void (*f16_logits)(const uint16_t *k, uint32_t n, uint32_t head_dim, const float *q, uint32_t rows, float *L,
                       uint32_t ldl);
    // acc_r += sum_t P[r * ldp + t] * v_t over fp16 rows v
    void (*f16_accumulate)(const uint16_t *v, uint32_t n, uint32_t head_dim, const float *P, uint32_t ldp,
                           uint32_t rows, float *acc);
    // L[r * ldl + t] = <q_r, k_t> over fp32 rows k
    void (*f32_logits)(const float *k, uint32_t n, uint32_t head_dim, const float *q, uint32_t rows, float *L,
                       uint32_t ldl);
    // p[t] = exp(x[t] - m) (0 where x[t] is -inf); returns the sum of p.
    float (*exp_sum)(const float *x, float m, float *p, uint32_t n);
};

// NULL when this build has no kernels for the ISA (other architectures).
const AttnKernels *attn_kernels_avx2();
const AttnKernels *attn_kernels_avx512();

}  // namespace nq
