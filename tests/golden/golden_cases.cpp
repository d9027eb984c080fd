// The golden cases. Together they cover both codecs, K and V bits 1..8 for each codec,
// the three RoPE modes, both pairings, partial rotary dims, linear / llama3 / YaRN
// scaling, no eviction and the three eviction modes (key-norm and given scores), the
// three input dtypes, contiguous, gapped (u16 offsets) and wide (u32 offsets)
// positions, fp16 sinks and windows, head_dim 24/32/64/96/128 (Hadamard blocks of
// 8..128) and 2..4 heads. Appending a case is fine; changing one changes its pins.
#include "golden_vectors.h"

#include <iterator>

namespace golden {

namespace {

constexpr nq_dtype F16 = NQ_DTYPE_F16, BF16 = NQ_DTYPE_BF16, F32 = NQ_DTYPE_F32;
constexpr nq_codec E8 = NQ_CODEC_E8, SQ = NQ_CODEC_SCALAR;
constexpr nq_rope_mode NONE = NQ_ROPE_NONE, REMOVE = NQ_ROPE_REMOVE, KEEP = NQ_ROPE_KEEP;
constexpr nq_rope_pairing SPLIT = NQ_ROPE_SPLIT_HALF, INTER = NQ_ROPE_INTERLEAVED;
constexpr nq_rope_scaling NOSCALE = NQ_ROPE_SCALING_NONE, LINEAR = NQ_ROPE_SCALING_LINEAR,
                          LLAMA3 = NQ_ROPE_SCALING_LLAMA3, YARN = NQ_ROPE_SCALING_YARN;
constexpr int NOEVICT = 0, PER_HEAD = NQ_EVICT_PER_HEAD, SHARED = NQ_EVICT_HEAD_SHARED, PAGED = NQ_EVICT_PAGED;
constexpr Scores NOSC = Scores::None, KEYNORM = Scores::KeyNorm, GIVEN = Scores::Given;
constexpr Positions CONTIG = Positions::Contiguous, GAPPED = Positions::Gapped, WIDE = Positions::Wide;

// clang-format off
const Case kCases[] = {
//  name                                   seed  H  D    T   dtype codec k  v  rope    pair   rot scaling  factor orig  evict     frac   sink win f16s f16w page scores   positions start  arch   inputs
  {"e8_k1v1_f16_plain",                    101, 2, 32,  16, F16,  E8,  1, 1, NONE,   SPLIT,  0, NOSCALE, 1.0,  0,   NOEVICT,  0.0f,  0,   0,  0,   0,   0,   NOSC,    CONTIG, 0,     true,  true},
  {"e8_k2v3_bf16_remove_fp16_ends",        102, 2, 64,  24, BF16, E8,  2, 3, REMOVE, SPLIT,  0, NOSCALE, 1.0,  0,   NOEVICT,  0.0f,  1,   2,  1,   2,   0,   NOSC,    CONTIG, 0,     true,  false},
  {"e8_k3v2_f32_keep",                     103, 2, 64,  20, F32,  E8,  3, 2, KEEP,   SPLIT,  0, NOSCALE, 1.0,  0,   NOEVICT,  0.0f,  0,   0,  0,   0,   0,   NOSC,    CONTIG, 7,     true,  true},
  {"e8_k4v4_f16_interleaved_partial",      104, 2, 64,  24, F16,  E8,  4, 4, REMOVE, INTER, 32, NOSCALE, 1.0,  0,   NOEVICT,  0.0f,  0,   0,  0,   0,   0,   NOSC,    CONTIG, 0,     false, false},
  {"e8_k5v6_bf16_llama3",                  105, 2, 128, 24, BF16, E8,  5, 6, REMOVE, SPLIT,  0, LLAMA3,  8.0,  16,  NOEVICT,  0.0f,  0,   0,  0,   0,   0,   NOSC,    CONTIG, 40,    false, false},
  {"e8_k6v5_f32_yarn",                     106, 2, 128, 24, F32,  E8,  6, 5, REMOVE, SPLIT,  0, YARN,    4.0,  32,  NOEVICT,  0.0f,  0,   0,  0,   0,   0,   NOSC,    CONTIG, 20,    false, false},
  {"e8_k7v8_f16_linear_interleaved",       107, 2, 64,  16, F16,  E8,  7, 8, REMOVE, INTER,  0, LINEAR,  2.0,  0,   NOEVICT,  0.0f,  0,   0,  0,   0,   0,   NOSC,    CONTIG, 3,     false, false},
  {"e8_k8v7_bf16_d96_h3",                  108, 3, 96,  16, BF16, E8,  8, 7, REMOVE, SPLIT,  0, NOSCALE, 1.0,  0,   NOEVICT,  0.0f,  0,   0,  0,   0,   0,   NOSC,    CONTIG, 5,     false, false},
  {"e8_k3v2_f16_per_head_keynorm_gapped",  109, 4, 64,  48, F16,  E8,  3, 2, REMOVE, SPLIT,  0, NOSCALE, 1.0,  0,   PER_HEAD, 0.5f,  2,   4,  1,   2,   0,   KEYNORM, GAPPED, 0,     true,  false},
  {"e8_k4v3_bf16_per_head_given",          110, 2, 64,  40, BF16, E8,  4, 3, REMOVE, SPLIT,  0, NOSCALE, 1.0,  0,   PER_HEAD, 0.4f,  4,   4,  0,   0,   0,   GIVEN,   CONTIG, 0,     false, false},
  {"e8_k2v2_f32_head_shared_given_keep",   111, 2, 64,  40, F32,  E8,  2, 2, KEEP,   SPLIT,  0, NOSCALE, 1.0,  0,   SHARED,   0.5f,  2,   4,  2,   2,   0,   GIVEN,   GAPPED, 0,     false, false},
  {"e8_k3v3_f16_paged_given",              112, 2, 64,  48, F16,  E8,  3, 3, REMOVE, SPLIT,  0, NOSCALE, 1.0,  0,   PAGED,    0.5f,  4,   8,  0,   4,   8,   GIVEN,   CONTIG, 16,    false, false},
  {"e8_k2v1_bf16_head_shared_wide",        113, 2, 32,  24, BF16, E8,  2, 1, REMOVE, SPLIT,  0, NOSCALE, 1.0,  0,   SHARED,   0.25f, 1,   2,  0,   0,   0,   KEYNORM, WIDE,   1000,  true,  false},
  {"e8_k5v4_f32_d24_wide",                 114, 2, 24,  12, F32,  E8,  5, 4, NONE,   SPLIT,  0, NOSCALE, 1.0,  0,   NOEVICT,  0.0f,  0,   0,  0,   0,   0,   NOSC,    WIDE,   0,     false, false},
  {"scalar_k1v2_f16_plain",                201, 2, 32,  16, F16,  SQ,  1, 2, NONE,   SPLIT,  0, NOSCALE, 1.0,  0,   NOEVICT,  0.0f,  0,   0,  0,   0,   0,   NOSC,    CONTIG, 0,     true,  false},
  {"scalar_k2v1_bf16_remove",              202, 2, 64,  20, BF16, SQ,  2, 1, REMOVE, SPLIT,  0, NOSCALE, 1.0,  0,   NOEVICT,  0.0f,  0,   0,  0,   0,   0,   NOSC,    CONTIG, 9,     false, false},
  {"scalar_k3v4_f32_keep_interleaved",     203, 2, 64,  16, F32,  SQ,  3, 4, KEEP,   INTER,  0, NOSCALE, 1.0,  0,   NOEVICT,  0.0f,  0,   0,  0,   0,   0,   NOSC,    CONTIG, 0,     false, false},
  {"scalar_k4v3_f16_llama3",               204, 2, 128, 16, F16,  SQ,  4, 3, REMOVE, SPLIT,  0, LLAMA3,  8.0,  16,  NOEVICT,  0.0f,  0,   0,  0,   0,   0,   NOSC,    CONTIG, 30,    false, false},
  {"scalar_k5v8_bf16_yarn_partial",        205, 2, 64,  16, BF16, SQ,  5, 8, REMOVE, INTER, 48, YARN,    4.0,  32,  NOEVICT,  0.0f,  0,   0,  0,   0,   0,   NOSC,    CONTIG, 12,    false, false},
  {"scalar_k6v7_f32_d24",                  206, 2, 24,  16, F32,  SQ,  6, 7, REMOVE, SPLIT,  0, NOSCALE, 1.0,  0,   NOEVICT,  0.0f,  0,   0,  0,   0,   0,   NOSC,    CONTIG, 0,     false, false},
  {"scalar_k7v5_f16_per_head_gapped",      207, 2, 64,  32, F16,  SQ,  7, 5, REMOVE, SPLIT,  0, NOSCALE, 1.0,  0,   PER_HEAD, 0.5f,  2,   2,  1,   1,   0,   KEYNORM, GAPPED, 0,     false, false},
  {"scalar_k8v6_bf16_paged_given",         208, 2, 32,  32, BF16, SQ,  8, 6, NONE,   SPLIT,  0, NOSCALE, 1.0,  0,   PAGED,    0.5f,  0,   4,  0,   0,   4,   GIVEN,   CONTIG, 0,     false, false},
  {"scalar_k3v3_f32_head_shared_given",    209, 2, 64,  32, F32,  SQ,  3, 3, REMOVE, SPLIT,  0, NOSCALE, 1.0,  0,   SHARED,   0.5f,  2,   4,  0,   0,   0,   GIVEN,   GAPPED, 4,     false, false},
  // key centering (FORMAT.md 1.8): header flag bit 3 and the k_mean section
  {"e8_k3v2_f16_per_head_key_mean",        115, 2, 64,  40, F16,  E8,  3, 2, REMOVE, SPLIT,  0, NOSCALE, 1.0,  0,   PER_HEAD, 0.25f, 2,   4,  1,   2,   0,   KEYNORM, GAPPED, 0,     true,  false, 1},
};
// clang-format on

}  // namespace

// A function-local copy: the table is usable from other files' static initialisers.
const std::vector<Case> &cases() {
    static const std::vector<Case> v(std::begin(kCases), std::end(kCases));
    return v;
}

}  // namespace golden
