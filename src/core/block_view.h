// A read-only view of a resident block image (docs/FORMAT.md, section 1) that works
// on the host and on the device: the header fields attention needs, the section
// offsets, and accessors per (head, kept token). It trusts the image: host code
// validates images before building a view (header_validate), device code reads images
// the library wrote.
#pragma once
#include <cstdint>
#include <cstring>

#include "format.h"
#include "nq_hd.h"

namespace nq {

struct BlockView {
    const uint8_t *base = nullptr;
    uint32_t flags = 0;
    uint8_t codec = 1, k_bits = 3, v_bits = 2, rope_mode = 0;
    uint32_t head_dim = 0, num_heads = 0, hadamard_block = 0;
    uint32_t tokens_kept = 0, fp16_sinks = 0, fp16_window = 0;
    uint32_t coded = 0, raw = 0, pos_rows = 0, pos_bytes = 4;
    uint32_t k_code_bytes = 0, v_code_bytes = 0;
    uint64_t first_position = 0;
    uint64_t off[kNumSections] = {};

    NQ_HD static uint32_t rd32(const uint8_t *p) {
        return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    }
    NQ_HD static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
    NQ_HD static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

    // Parses the header at `image` and computes the section offsets exactly as
    // block_geometry() does.
    NQ_HD static BlockView of(const void *image) {
        BlockView v;
        const uint8_t *p = static_cast<const uint8_t *>(image);
        v.base = p;
        v.flags = rd32(p + 8);
        v.codec = p[12];
        v.k_bits = p[13];
        v.v_bits = p[14];
        v.head_dim = rd16(p + 16);
        v.num_heads = rd16(p + 18);
        v.hadamard_block = rd16(p + 20);
        v.rope_mode = p[22];
        v.tokens_kept = rd32(p + 36);
        v.fp16_sinks = rd32(p + 40);
        v.fp16_window = rd32(p + 44);
        v.first_position = rd64(p + 112);
        v.raw = v.fp16_sinks + v.fp16_window;
        v.coded = v.tokens_kept - v.raw;
        v.pos_rows = (v.flags & kFlagPositionsContiguous) ? 0u
                                                          : ((v.flags & kFlagPositionsPerHead) ? v.num_heads : 1u);
        v.pos_bytes = (v.flags & kFlagPositions16) ? 2u : 4u;
        v.k_code_bytes = v.head_dim * v.k_bits / 8;
        v.v_code_bytes = v.head_dim * v.v_bits / 8;
        const uint64_t H = v.num_heads, D = v.head_dim;
        uint64_t len[kNumSections];
        len[kSecPositions] = (uint64_t)v.pos_rows * v.tokens_kept * v.pos_bytes;
        len[kSecKScales] = H * v.coded * 2;
        len[kSecVScales] = H * v.coded * 2;
        len[kSecKCodes] = H * v.coded * v.k_code_bytes;
        len[kSecVCodes] = H * v.coded * v.v_code_bytes;
        len[kSecKRaw] = H * v.raw * D * 2;
        len[kSecVRaw] = H * v.raw * D * 2;
        len[kSecKMean] = (v.flags & kFlagKeyMean) ? H * D * 2 : 0;
        uint64_t o = kHeaderBytes;
        for (int s = 0; s < kNumSections; ++s) {
            o = (o + kSectionAlign - 1) / kSectionAlign * kSectionAlign;
            v.off[s] = o;
            o += len[s];
        }
        return v;
    }

    // Kept token j of a head is raw slot j (a sink), coded slot j - fp16_sinks, or raw
    // slot fp16_sinks + j - (tokens_kept - fp16_window) (the window). Returns true and
    // the coded slot, or false and the raw slot.
    NQ_HD bool coded_slot(uint32_t j, uint32_t *slot) const {
        if (j < fp16_sinks) {
            *slot = j;
            return false;
        }
        if (j >= tokens_kept - fp16_window) {
            *slot = fp16_sinks + j - (tokens_kept - fp16_window);
            return false;
        }
        *slot = j - fp16_sinks;
        return true;
    }

    // Original position of kept token j of head h.
    NQ_HD int64_t position(uint32_t h, uint32_t j) const {
        if (pos_rows == 0) return (int64_t)(first_position + j);
        const uint32_t row = pos_rows == 1 ? 0u : h;
        const uint8_t *p = base + off[kSecPositions] + ((uint64_t)row * tokens_kept + j) * pos_bytes;
        return (int64_t)(first_position + (pos_bytes == 2 ? rd16(p) : rd32(p)));
    }

    NQ_HD const uint16_t *k_scales(uint32_t h) const {
        return reinterpret_cast<const uint16_t *>(base + off[kSecKScales]) + (uint64_t)h * coded;
    }
    NQ_HD const uint16_t *v_scales(uint32_t h) const {
        return reinterpret_cast<const uint16_t *>(base + off[kSecVScales]) + (uint64_t)h * coded;
    }
    NQ_HD const uint8_t *k_codes(uint32_t h, uint32_t slot) const {
        return base + off[kSecKCodes] + ((uint64_t)h * coded + slot) * k_code_bytes;
    }
    NQ_HD const uint8_t *v_codes(uint32_t h, uint32_t slot) const {
        return base + off[kSecVCodes] + ((uint64_t)h * coded + slot) * v_code_bytes;
    }
    // fp16 bits of raw slot `slot` of head h: head_dim values.
    NQ_HD const uint16_t *k_raw(uint32_t h, uint32_t slot) const {
        return reinterpret_cast<const uint16_t *>(base + off[kSecKRaw]) + ((uint64_t)h * raw + slot) * head_dim;
    }
    // fp16 bits of the key mean of head h (FORMAT.md 1.8); only with kFlagKeyMean.
    NQ_HD bool key_mean() const { return (flags & kFlagKeyMean) != 0; }
    NQ_HD const uint16_t *k_mean(uint32_t h) const {
        return reinterpret_cast<const uint16_t *>(base + off[kSecKMean]) + (uint64_t)h * head_dim;
    }
    NQ_HD const uint16_t *v_raw(uint32_t h, uint32_t slot) const {
        return reinterpret_cast<const uint16_t *>(base + off[kSecVRaw]) + ((uint64_t)h * raw + slot) * head_dim;
    }
};

}  // namespace nq
