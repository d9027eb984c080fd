#include "../core/format.h"

#include <cstring>

#include "../core/codecs.h"
#include "../core/hadamard.h"

namespace nq {
namespace {

template <class T> void put(uint8_t *dst, size_t off, T v) { std::memcpy(dst + off, &v, sizeof(T)); }
template <class T> T get(const uint8_t *src, size_t off) {
    T v;
    std::memcpy(&v, src + off, sizeof(T));
    return v;
}

}  // namespace

BlockGeometry block_geometry(const BlockHeader &h) {
    BlockGeometry g{};
    const uint64_t H = h.num_heads, D = h.head_dim;
    g.raw = h.fp16_sinks + h.fp16_window;
    g.coded = h.tokens_kept - g.raw;
    g.pos_rows = (h.flags & kFlagPositionsContiguous) ? 0 : ((h.flags & kFlagPositionsPerHead) ? h.num_heads : 1);
    g.k_code_bytes = (uint32_t)(D * h.k_bits / 8);
    g.v_code_bytes = (uint32_t)(D * h.v_bits / 8);
    g.pos_bytes = (h.flags & kFlagPositions16) ? 2 : 4;
    g.length[kSecPositions] = (uint64_t)g.pos_rows * h.tokens_kept * g.pos_bytes;
    g.length[kSecKScales] = H * g.coded * 2;
    g.length[kSecVScales] = H * g.coded * 2;
    g.length[kSecKCodes] = H * g.coded * g.k_code_bytes;
    g.length[kSecVCodes] = H * g.coded * g.v_code_bytes;
    g.length[kSecKRaw] = H * g.raw * D * 2;
    g.length[kSecVRaw] = H * g.raw * D * 2;
    g.length[kSecKMean] = (h.flags & kFlagKeyMean) ? H * D * 2 : 0;
    uint64_t off = kHeaderBytes;
    for (int s = 0; s < kNumSections; ++s) {
        off = align_up(off, kSectionAlign);
        g.offset[s] = off;
        off += g.length[s];
    }
    g.total = align_up(off, kSectionAlign);
    return g;
}

void header_write(const BlockHeader &h, uint8_t *d) {
    std::memset(d, 0, kHeaderBytes);
    put<uint32_t>(d, 0, kBlockMagic);
    put<uint16_t>(d, 4, kFormatVersion);
    put<uint16_t>(d, 6, (uint16_t)kHeaderBytes);
    put<uint32_t>(d, 8, h.flags);
    d[12] = h.codec;
    d[13] = h.k_bits;
    d[14] = h.v_bits;
    d[15] = h.evict_mode;
    put<uint16_t>(d, 16, h.head_dim);
    put<uint16_t>(d, 18, h.num_heads);
    put<uint16_t>(d, 20, h.hadamard_block);
    d[22] = h.rope_mode;
    d[23] = h.rope_pairing;
    d[24] = h.rope_scaling;
    d[25] = h.src_dtype;
    put<uint16_t>(d, 26, h.rotary_dims);
    put<uint32_t>(d, 28, h.layer);
    put<uint32_t>(d, 32, h.tokens_in);
    put<uint32_t>(d, 36, h.tokens_kept);
    put<uint32_t>(d, 40, h.fp16_sinks);
    put<uint32_t>(d, 44, h.fp16_window);
    put<uint32_t>(d, 48, h.rope_seq_len);
    put<uint32_t>(d, 52, h.rope_original_max_position);
    put<double>(d, 56, h.theta);
    put<double>(d, 64, h.factor);
    put<double>(d, 72, h.low_freq_factor);
    put<double>(d, 80, h.high_freq_factor);
    put<double>(d, 88, h.beta_fast);
    put<double>(d, 96, h.beta_slow);
    put<double>(d, 104, h.attention_factor);
    put<uint64_t>(d, 112, h.first_position);
    put<uint64_t>(d, 120, h.total_bytes);
}

void header_read(const uint8_t *d, BlockHeader *h) {
    h->flags = get<uint32_t>(d, 8);
    h->codec = d[12];
    h->k_bits = d[13];
    h->v_bits = d[14];
    h->evict_mode = d[15];
    h->head_dim = get<uint16_t>(d, 16);
    h->num_heads = get<uint16_t>(d, 18);
    h->hadamard_block = get<uint16_t>(d, 20);
    h->rope_mode = d[22];
    h->rope_pairing = d[23];
    h->rope_scaling = d[24];
    h->src_dtype = d[25];
    h->rotary_dims = get<uint16_t>(d, 26);
    h->layer = get<uint32_t>(d, 28);
    h->tokens_in = get<uint32_t>(d, 32);
    h->tokens_kept = get<uint32_t>(d, 36);
    h->fp16_sinks = get<uint32_t>(d, 40);
    h->fp16_window = get<uint32_t>(d, 44);
    h->rope_seq_len = get<uint32_t>(d, 48);
    h->rope_original_max_position = get<uint32_t>(d, 52);
    h->theta = get<double>(d, 56);
    h->factor = get<double>(d, 64);
    h->low_freq_factor = get<double>(d, 72);
    h->high_freq_factor = get<double>(d, 80);
    h->beta_fast = get<double>(d, 88);
    h->beta_slow = get<double>(d, 96);
    h->attention_factor = get<double>(d, 104);
    h->first_position = get<uint64_t>(d, 112);
    h->total_bytes = get<uint64_t>(d, 120);
}

static bool finite_pos(double x) { return x > 0.0 && x < 1e300; }

const char *header_validate(const BlockHeader &h) {
    if (h.flags & ~(uint32_t)(kFlagPositionsPerHead | kFlagPositionsContiguous | kFlagPositions16 | kFlagKeyMean))
        return "header.flags has unknown bits";
    if ((h.flags & kFlagPositionsContiguous) && (h.flags & kFlagPositions16))
        return "header.flags: contiguous positions store no offsets";
    if ((h.flags & kFlagPositionsPerHead) && (h.flags & kFlagPositionsContiguous))
        return "header.flags: per-head positions cannot be contiguous";
    const CodecTraits *codec = codec_traits(h.codec);
    if (!codec) return "header.codec is not E8 (1) or scalar (2)";
    if (!codec_bits_supported(*codec, h.k_bits)) return "header.k_bits outside 1..8";
    if (!codec_bits_supported(*codec, h.v_bits)) return "header.v_bits outside 1..8";
    if (h.evict_mode < 1 || h.evict_mode > 3) return "header.evict_mode outside 1..3";
    if (!head_dim_supported(h.head_dim)) return "header.head_dim not a multiple of 8 in 8..512";
    if (h.num_heads < 1 || h.num_heads > 4096) return "header.num_heads outside 1..4096";
    if (h.hadamard_block != hadamard_block(h.head_dim)) return "header.hadamard_block does not match head_dim";
    if (h.rope_mode > 2) return "header.rope_mode outside 0..2";
    if (h.rope_pairing < 1 || h.rope_pairing > 2) return "header.rope_pairing outside 1..2";
    if (h.rope_scaling > 4) return "header.rope_scaling outside 0..4";
    if (h.src_dtype < 1 || h.src_dtype > 3) return "header.src_dtype outside 1..3";
    if (h.rotary_dims < 2 || h.rotary_dims > h.head_dim || h.rotary_dims % 2) return "header.rotary_dims invalid";
    if (h.tokens_in < 1) return "header.tokens_in is 0";
    if (h.tokens_kept < 1 || h.tokens_kept > h.tokens_in) return "header.tokens_kept outside 1..tokens_in";
    if ((uint64_t)h.fp16_sinks + h.fp16_window > h.tokens_kept) return "header.fp16_sinks + fp16_window > tokens_kept";
    if (!finite_pos(h.theta)) return "header.theta not positive";
    if (!finite_pos(h.factor)) return "header.factor not positive";
    if (!(h.low_freq_factor > 0.0 && h.low_freq_factor < 1e300)) return "header.low_freq_factor invalid";
    if (!(h.high_freq_factor > h.low_freq_factor || h.rope_scaling != 3)) return "header.high_freq_factor invalid";
    if (!(h.beta_fast >= 0.0 && h.beta_fast < 1e300) || !(h.beta_slow >= 0.0 && h.beta_slow < 1e300))
        return "header.beta_fast/beta_slow invalid";
    if (!(h.attention_factor >= 0.0 && h.attention_factor < 1e300)) return "header.attention_factor invalid";
    if ((h.rope_scaling == 2 || h.rope_scaling == 3 || h.rope_scaling == 4) && h.rope_original_max_position == 0)
        return "header.rope_original_max_position is 0";
    if (h.first_position >= (1ull << 32) ||
        ((h.flags & kFlagPositionsContiguous) && h.first_position + h.tokens_kept > (1ull << 32)))
        return "header.first_position out of range";
    if ((h.flags & kFlagPositionsContiguous) && h.tokens_kept != h.tokens_in)
        return "header: contiguous positions with evicted tokens";
    return nullptr;
}

}  // namespace nq
