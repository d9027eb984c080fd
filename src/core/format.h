// The resident block format (docs/FORMAT.md is the normative description).
//
// A block is one contiguous byte image: a 128-byte header, then sections each starting
// at a multiple of 16 bytes (padding bytes are zero):
//   positions  u16|u32 [P][kept]     offsets from first_position; absent when
//                                    positions are contiguous; P = heads when each
//                                    head kept its own tokens, else 1
//   k_scales   bf16 [heads][coded]
//   v_scales   bf16 [heads][coded]
//   k_codes    u8 [heads][coded][head_dim*k_bits/8]
//   v_codes    u8 [heads][coded][head_dim*v_bits/8]
//   k_fp16     f16 [heads][raw][head_dim]   raw = fp16 sinks then fp16 window tokens
//   v_fp16     f16 [heads][raw][head_dim]
//   k_mean     f16 [heads][head_dim]        only with kFlagKeyMean: the per-head mean
//                                           of the coded keys in the rotated domain
// kept = raw + coded; the kept tokens of a head in order of original position are:
// fp16 sinks, coded tokens, fp16 window.
#pragma once
#include <cstddef>
#include <cstdint>

namespace nq {

constexpr uint32_t kBlockMagic = 0x424b514eu;  // "NQKB" little-endian
constexpr uint16_t kFormatVersion = 1;
constexpr uint32_t kHeaderBytes = 128;
constexpr uint32_t kSectionAlign = 16;

// The head dimensions a block holds: whole groups of 8 (one E8 point), at most 512.
constexpr uint32_t kHeadDimGroup = 8, kHeadDimLimit = 512;
constexpr bool head_dim_supported(uint32_t d) { return d >= kHeadDimGroup && d <= kHeadDimLimit && d % kHeadDimGroup == 0; }

enum BlockFlags : uint32_t {
    kFlagPositionsPerHead = 1u << 0,
    kFlagPositionsContiguous = 1u << 1,
    kFlagPositions16 = 1u << 2,  // positions stored as u16 offsets from first_position
    kFlagKeyMean = 1u << 3,      // k_mean section present; coded keys are centred on it
};

// Key mean (FORMAT.md 1.8): coded slots are summed in float64 in runs of this many, each
// run in slot order from 0.0, the run sums added in run order. Runs let a backend sum
// them in parallel and still write the same bits as every other backend.
constexpr uint32_t kKeyMeanRun = 256;

enum Section : int {
    kSecPositions = 0,
    kSecKScales,
    kSecVScales,
    kSecKCodes,
    kSecVCodes,
    kSecKRaw,
    kSecVRaw,
    kSecKMean,  // f16 [heads][head_dim], only with kFlagKeyMean (FORMAT.md 1.8)
    kNumSections
};

struct BlockHeader {
    uint32_t flags = 0;
    uint8_t codec = 1, k_bits = 3, v_bits = 2, evict_mode = 1;
    uint16_t head_dim = 0, num_heads = 0;
    uint16_t hadamard_block = 0;
    uint8_t rope_mode = 0, rope_pairing = 1, rope_scaling = 0, src_dtype = 1;
    uint16_t rotary_dims = 0;
    uint32_t layer = 0;
    uint32_t tokens_in = 0, tokens_kept = 0;
    uint32_t fp16_sinks = 0, fp16_window = 0;
    uint32_t rope_seq_len = 0, rope_original_max_position = 0;
    double theta = 10000.0, factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
    double beta_fast = 32.0, beta_slow = 1.0, attention_factor = 0.0;
    uint64_t first_position = 0;
    uint64_t total_bytes = 0;
};

struct BlockGeometry {
    uint64_t offset[kNumSections];
    uint64_t length[kNumSections];  // without padding
    uint64_t total;
    uint32_t coded;        // coded tokens per head
    uint32_t raw;          // fp16 tokens per head
    uint32_t pos_rows;     // 0 (contiguous), 1 or heads
    uint32_t pos_bytes;    // 2 or 4 per stored position
    uint32_t k_code_bytes; // per token
    uint32_t v_code_bytes;
};

// Computes section offsets and the total size; total_bytes of h is not read.
BlockGeometry block_geometry(const BlockHeader &h);

void header_write(const BlockHeader &h, uint8_t *dst);  // 128 bytes
void header_read(const uint8_t *src, BlockHeader *h);    // no validation

// Checks every field of a header read from untrusted bytes; returns a message naming
// the bad field, or nullptr when the header is self-consistent.
const char *header_validate(const BlockHeader &h);

inline uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace nq
