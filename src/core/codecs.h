// The codecs as data: every codec the format knows, with what validation, the header
// checks and the command-line tool read about it. A new codec is one entry here plus
// its group encode/decode (lattice_codec.h) and its per-bits step (codec_alpha in
// vector_codec.h, which device code reads).
#pragma once
#include <cstdint>
#include <cstring>

namespace nq {

struct CodecTraits {
    uint8_t id;             // the header's codec byte, = the nq_codec value
    const char *name;       // the command-line spelling
    uint8_t min_bits, max_bits;
    uint8_t group;          // dimensions coded together
};

constexpr CodecTraits kCodecTable[] = {
    {1, "e8", 1, 8, 8},      // NQ_CODEC_E8: nearest point of the scaled E8 lattice
    {2, "scalar", 1, 8, 8},  // NQ_CODEC_SCALAR: uniform scalar, the baseline
};
constexpr uint32_t kNumCodecs = sizeof kCodecTable / sizeof kCodecTable[0];

// The entry of a codec id; NULL for an id no codec has.
inline const CodecTraits *codec_traits(uint32_t id) {
    for (const CodecTraits &c : kCodecTable)
        if (c.id == id) return &c;
    return nullptr;
}

// The entry of a command-line name; NULL for an unknown name.
inline const CodecTraits *codec_by_name(const char *name) {
    for (const CodecTraits &c : kCodecTable)
        if (std::strcmp(c.name, name) == 0) return &c;
    return nullptr;
}

// Whether bits per dimension are in the codec's range.
inline bool codec_bits_supported(const CodecTraits &c, uint32_t bits) { return bits >= c.min_bits && bits <= c.max_bits; }

}  // namespace nq
