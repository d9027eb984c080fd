// The interface between the CPU backend's driver (cpu_tiles.cpp) and the per-ISA
// kernels (kernels_avx2.cpp, kernels_avx512.cpp).
//
// A kernel works on a *tile*: up to W tokens of one head (W = the ISA's float lanes),
// held dimension-major ([head_dim][W]) so that every lane is one token and every step
// of the pipeline (RoPE, Hadamard, sum of squares, scale, E8/scalar quantiser, packing)
// is the scalar reference's operation sequence applied to W tokens at once: no
// reduction crosses lanes, so no reduction order changes.
//
// This header is included by translation units compiled with AVX2/AVX-512 flags. It
// must stay free of inline functions with external linkage: an out-of-line copy of one
// compiled with -mavx512f could be the one the linker keeps for the whole library.
#pragma once
#include <cstdint>

#include "nexusquant.h"

namespace nq {

constexpr uint32_t kTileLanesMax = 16;

// Cos/sin tables of a tile: t[p * W + w] for pair p (rotary_dims / 2 of them) and lane w.
struct TileRope {
    const float *c;  // NULL: no RoPE step
    const float *s;
    uint32_t rotary_dims;
    uint8_t pairing;  // kPairSplitHalf / kPairInterleaved (rope.h)
};

// Quantises `lanes` rows of one head. Rows are element 0 of each token's head vector,
// with unit dim stride (the driver gathers other layouts into scratch first); the scales
// (bf16) and codes of the tile's tokens are contiguous.
struct EncodeTile {
    uint32_t lanes;
    uint32_t head_dim;
    int codec;  // kCodecE8 / kCodecScalar
    int bits;
    float alpha;  // codec_alpha(codec, bits)
    nq_dtype dtype;
    const void *rows[kTileLanesMax];
    TileRope rope;  // inverse tables: removal of the model's rotation
    uint8_t *scales;
    uint8_t *codes;  // lanes * head_dim * bits / 8 bytes
    float *work;     // head_dim * W floats, 64-byte aligned: the tile itself
    // The head's key mean (FORMAT.md 1.8) as f32 (from its f16 bits): subtracted after
    // the Hadamard, before the scale. NULL: not centred.
    const float *mean;
};

struct DecodeTile {
    uint32_t lanes;
    uint32_t head_dim;
    int codec;
    int bits;
    const uint8_t *scales;
    const uint8_t *codes;
    TileRope rope;  // forward tables
    nq_dtype dtype;
    void *rows[kTileLanesMax];  // unit dim stride
    float *work;  // head_dim * W floats, 64-byte aligned
    const float *mean;  // added back before the inverse Hadamard; NULL: not centred
};

// Cos/sin of positions[w] * inv_freq[p] for the tile's lanes, rounded to float exactly
// as rope_tables() (rope.cpp) rounds them: forward (x mscale) or inverse (/ mscale).
// Lanes past `lanes` get the tables of lane 0.
struct RopeTableArgs {
    const double *inv_freq;
    uint32_t num_freq;
    double mscale;
    const int64_t *positions;  // [lanes]
    uint32_t lanes;
    bool inverse;
    float *c;  // [num_freq][W]
    float *s;
};

struct CpuKernels {
    const char *name;
    nq_cpu_isa isa;
    uint32_t lanes;  // W
    // false when a lane's sum of squares is not finite (inf/nan input): nothing the
    // tile wrote is meaningful then.
    bool (*encode)(const EncodeTile &tile);
    void (*decode)(const DecodeTile &tile);
    // The key-mean pass of a centred block: the tile's rows rotated as encode rotates
    // them (RoPE removed, signs, Hadamard; tile.mean, codec and bits unused), added in
    // float64 to sum[d] lane after lane, so sum[d] takes the slots in order. sum holds
    // head_dim rounded up to W doubles (the padding is left at zero).
    void (*key_sum)(const EncodeTile &tile, double *sum);
    void (*rope_tables)(const RopeTableArgs &args);
    // A head vector of the engine's dtype -> fp16 (the raw sink/window rows), and back.
    void (*row_to_f16)(const void *src, nq_dtype dtype, int64_t stride_dim, uint32_t n, uint16_t *dst);
    void (*f16_to_row)(const uint16_t *src, uint32_t n, void *dst, nq_dtype dtype, int64_t stride_dim);
};

// NULL when the library was built without that ISA's kernels (non-x86 targets).
const CpuKernels *cpu_kernels_avx2();
const CpuKernels *cpu_kernels_avx512();

// rope.cpp's reference; the fast table kernels fall back to it for the rare angles whose
// rounding to float they cannot decide (see kernels_impl.inc).
void rope_tables(const double *inv_freq, uint32_t num_freq, double mscale, int64_t position, float *cos_fwd,
                 float *sin_fwd, float *cos_inv, float *sin_inv);

}  // namespace nq
