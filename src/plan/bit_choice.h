// Per-block choice of K and V bits from the block's own data (no calibration).
//
// A quality preset gives nominal bits (kb0, vb0) and a distortion target. Candidates
// are the pairs in bit_range(kb0, vb0); every candidate costs at most kb0 + vb0 + 1
// bits per element pair, which is what nq_compress_bound() plans for (the bound is
// known before any data is read).
//
// Distortion of a pair, with the engine's last queries (NQ_SCORES_QUERIES, host):
// the expected squared error of the attention output, relative to its energy, over
// those queries and every query head:
//     D(kb, vb) = eps_K(kb)^2 * A_K + eps_V(vb)^2 * A_V
// eps_X(b)^2 is the measured relative quantisation error (||x - x^||^2 / ||x||^2) of a
// sample of the block's own vectors at b bits; A_K and A_V come from one attention pass
// over the kept tokens. The codec's error after the Hadamard rotation is close to white,
// so a key error d_t moves logit t by a zero-mean amount of variance
// |q|^2 |d_t|^2 / (D * D_head) (scaled logits), which changes the output by
// sum_t p_t e_t (v_t - o) to first order:
//     A_K = sum_q sum_t p_t^2 |q|^2 |k_t|^2 / D^2 * |v_t - o|^2 / sum_q |o|^2
//     A_V = sum_q sum_t p_t^2 |v_t|^2                        / sum_q |o|^2
// over quantised tokens only (fp16 sinks and window have no error). The model assumes
// independent errors across tokens, which real caches violate (common components are
// quantised alike), so it is only trusted to spend bits, never to save them. Among the
// candidates whose block keeps the preset's ratio floor, the cheapest pair with
// D <= target wins (ties: lower D, then more key bits); when none reaches the target,
// the pair of least D among the most expensive ones.
//
// Without queries (or on the GPU path): the nominal pair. Key/value statistics alone
// do not tell how much a model's attention amplifies the error: on synthetic keys with
// outlier channels a "twice the Gaussian error" rule spent the extra key bit and broke
// the lossless ratio floor at head_dim 128, with no quality signal behind it.
#pragma once
#include <cstdint>

#include "../api/internal.h"
#include "../core/format.h"

namespace nq {

struct Workspace;

struct BitRange {
    uint32_t k_lo, k_hi, v_lo, v_hi;
    uint32_t sum_max;  // k + v never exceeds this (the bound)
};

// Candidate pairs at or above nominal (kb0, vb0): keys up to two bits more, values
// one, at most kb0 + vb0 + extra bits in all (extra: 1 for the quality presets).
BitRange bit_range(uint32_t kb0, uint32_t vb0, uint32_t extra);

// Whether the block of header h, at (kb, vb), keeps its ratio (fp16 bytes of the input
// / block bytes) at or above floor. The nominal pair is always allowed.
bool meets_floor(const BlockHeader &h, uint32_t kb, uint32_t vb, uint32_t kb0, uint32_t vb0, float floor);

// The pair of largest block size among the candidates that meet the floor (what the
// bound plans with, from the planned header h: known before any data is read).
void bound_bits(const BlockHeader &h, uint32_t kb0, uint32_t vb0, uint32_t extra, float floor, uint32_t *kb,
                uint32_t *vb);

// Scratch (bytes) choose_bits takes from the workspace for a block of T input tokens.
size_t bit_choice_scratch_bytes(uint32_t num_tokens);

struct BitChoiceInput {
    const nq_kv_desc *kv;          // host memory, validated
    const nq_score_desc *queries;  // NQ_SCORES_QUERIES in host memory (validated), or NULL
    const int64_t *positions;      // [num_tokens]
    const BlockHeader *h;          // planned header: tokens_kept, fp16_sinks, fp16_window
    const uint32_t *kept;          // [rows][tokens_kept] or NULL (every token)
    uint32_t rows;
    uint32_t k_bits, v_bits;       // nominal
    uint32_t extra;                // see bit_range
    float target;                  // distortion target (relative output MSE)
    float floor;                   // ratio floor of the block (0: none)
};

struct BitChoice {
    uint32_t k_bits, v_bits;
    double a_k, a_v;               // measured sensitivities (0 without queries)
};

nq_status choose_bits(const nq_context *ctx, const BitChoiceInput &in, Workspace &ws, BitChoice *out);

}  // namespace nq
