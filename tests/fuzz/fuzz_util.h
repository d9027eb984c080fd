// Shared by the fuzz targets: a reader that draws values from the fuzz input, checks
// that abort with a message (so libFuzzer records the input), and helpers that decode
// or describe blocks through the public API only.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "nexusquant.h"

namespace nqfuzz {

[[noreturn]] inline void fatal(const char *file, int line, const char *what) {
    std::fprintf(stderr, "%s:%d: fuzz invariant failed: %s (last error: \"%s\")\n", file, line, what,
                 nq_last_error());
    std::abort();
}

#define FUZZ_CHECK(cond)                                     \
    do {                                                     \
        if (!(cond)) ::nqfuzz::fatal(__FILE__, __LINE__, #cond); \
    } while (0)

// A failing call must return a known status and say why.
inline nq_status checked(nq_status st) {
    if (st != NQ_OK) {
        FUZZ_CHECK(st >= NQ_ERR_INVALID_ARGUMENT && st <= NQ_ERR_INTERNAL);
        FUZZ_CHECK(st != NQ_ERR_INTERNAL);
        FUZZ_CHECK(nq_last_error()[0] != '\0');
    }
    return st;
}

// Values drawn from the input; zeros once it runs out (so every input is valid).
class Reader {
public:
    Reader(const uint8_t *data, size_t size) : p_(data), n_(size) {}
    uint8_t u8() {
        if (!n_) return 0;
        --n_;
        return *p_++;
    }
    uint16_t u16() { return (uint16_t)(u8() | (uint16_t)u8() << 8); }
    uint32_t u32() { return (uint32_t)u16() | (uint32_t)u16() << 16; }
    uint64_t u64() { return (uint64_t)u32() | (uint64_t)u32() << 32; }
    bool flag() { return u8() & 1; }
    // Uniform-ish in [lo, hi].
    uint32_t range(uint32_t lo, uint32_t hi) {
        const uint64_t span = (uint64_t)hi - lo + 1;
        return lo + (uint32_t)((span > 256 ? u32() : u8()) % span);
    }
    template <class T> T pick(std::initializer_list<T> options) {
        return options.begin()[u8() % options.size()];
    }
    size_t left() const { return n_; }
    const uint8_t *rest() const { return p_; }

private:
    const uint8_t *p_;
    size_t n_;
};

// The bits of small finite values for K/V: taken from the input where it has bytes,
// else from a generator seeded by it, so short inputs still describe full tensors.
class ValueSource {
public:
    ValueSource(const uint8_t *p, size_t n) : p_(p), n_(n) {
        for (size_t i = 0; i < n && i < 64; ++i) s_ = (s_ ^ p[i]) * 0x100000001b3ull;
    }
    float next() {
        uint8_t b;
        if (i_ < n_) {
            b = p_[i_++];
        } else {
            s_ ^= s_ << 13;
            s_ ^= s_ >> 7;
            s_ ^= s_ << 17;
            b = (uint8_t)(s_ >> 24);
        }
        // -4..4 in steps of 1/32, with one value in 64 a large outlier
        float v = ((float)b - 128.0f) / 32.0f;
        if ((b & 63) == 7) v *= 60.0f;
        return v;
    }

private:
    const uint8_t *p_;
    size_t n_, i_ = 0;
    uint64_t s_ = 0xcbf29ce484222325ull;
};

inline uint32_t dtype_size(nq_dtype t) { return t == NQ_DTYPE_F32 ? 4 : (t == NQ_DTYPE_F16 || t == NQ_DTYPE_BF16) ? 2 : 0; }

inline uint16_t f32_to_f16_bits(float f) {  // exact for the values ValueSource makes
    if (f == 0.0f) return 0;
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const int32_t e = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    return (uint16_t)(sign | ((uint32_t)e << 10) | ((x & 0x7fffffu) >> 13));
}

// Stores one value of dtype t at element index i of base.
inline void store(void *base, nq_dtype t, int64_t i, float f) {
    if (t == NQ_DTYPE_F32) {
        std::memcpy(static_cast<float *>(base) + i, &f, 4);
    } else {
        uint16_t h;
        if (t == NQ_DTYPE_F16) {
            h = f32_to_f16_bits(f);
        } else {
            uint32_t x;
            std::memcpy(&x, &f, 4);
            h = (uint16_t)(x >> 16);
        }
        std::memcpy(static_cast<uint16_t *>(base) + i, &h, 2);
    }
}

// Element offset of (h, t, d) in a layout, the formula of the header's nq_layout.
inline int64_t layout_offset(const nq_layout &l, uint32_t h, uint32_t t, uint32_t d) {
    const int64_t sd = l.stride_dim ? l.stride_dim : 1;
    if (l.kind == NQ_LAYOUT_PAGED)
        return (int64_t)l.page_table[t / l.page_size] * l.stride_page + (int64_t)(t % l.page_size) * l.stride_token +
               (int64_t)h * l.stride_head + (int64_t)d * sd;
    return (int64_t)h * l.stride_head + (int64_t)t * l.stride_token + (int64_t)d * sd;
}

struct BlockSummary {
    nq_block_info info;
    uint64_t digest = 0;
};

// Info, positions and digest of a host block, with their invariants checked.
inline BlockSummary describe(const nq_block *b) {
    BlockSummary s;
    std::memset(&s.info, 0, sizeof s.info);
    s.info.size = sizeof s.info;
    FUZZ_CHECK(nq_block_get_info(b, &s.info) == NQ_OK);
    const nq_block_info &i = s.info;
    FUZZ_CHECK(i.tokens_kept >= 1 && i.tokens_kept <= i.tokens_in);
    FUZZ_CHECK(i.fp16_sinks + (uint64_t)i.fp16_window <= i.tokens_kept);
    FUZZ_CHECK(i.header_bytes + i.position_bytes + i.scale_bytes + i.code_bytes + i.fp16_bytes + i.padding_bytes + i.key_mean_bytes ==
               i.resident_bytes);
    FUZZ_CHECK(i.padding_bytes < 16 * 8);
    const void *data = nullptr;
    size_t bytes = 0;
    FUZZ_CHECK(nq_block_data(b, &data, &bytes) == NQ_OK);
    FUZZ_CHECK(data != nullptr && bytes == i.resident_bytes);
    FUZZ_CHECK(nq_block_digest(b, &s.digest) == NQ_OK);
    std::vector<int64_t> pos(i.tokens_kept);
    int64_t first = INT64_MAX, last = -1;
    for (uint32_t h = 0; h < i.num_heads; ++h) {
        FUZZ_CHECK(nq_block_positions(b, h, 0, i.tokens_kept, pos.data()) == NQ_OK);
        for (uint32_t j = 0; j < i.tokens_kept; ++j) {
            FUZZ_CHECK(pos[j] >= 0 && pos[j] < ((int64_t)1 << 32));
            if (j) FUZZ_CHECK(pos[j] > pos[j - 1]);
        }
        first = pos[0] < first ? pos[0] : first;
        last = pos[i.tokens_kept - 1] > last ? pos[i.tokens_kept - 1] : last;
    }
    FUZZ_CHECK(first == i.first_position && last == i.last_position);
    FUZZ_CHECK(nq_block_positions(b, i.num_heads, 0, 1, pos.data()) == NQ_ERR_OUT_OF_RANGE);
    return s;
}

// Decodes tokens [begin, end) of a block as contiguous [heads][end-begin][head_dim].
inline std::vector<uint8_t> decode_contiguous(nq_context *ctx, const nq_block *b, const nq_block_info &info,
                                              uint32_t begin, uint32_t end, nq_dtype dt, nq_status *st) {
    const uint32_t n = end - begin;
    const size_t elems = (size_t)info.num_heads * n * info.head_dim;
    std::vector<uint8_t> k(elems * dtype_size(dt) + 1), v(elems * dtype_size(dt) + 1);
    nq_kv_desc out;
    nq_kv_desc_init(&out);
    out.dtype = dt;
    out.num_tokens = n;
    out.k = k.data();
    out.v = v.data();
    nq_layout_contiguous(&out.k_layout, n, info.head_dim);
    nq_layout_contiguous(&out.v_layout, n, info.head_dim);
    *st = checked(nq_decode(ctx, b, begin, end, &out, nullptr));
    k.pop_back();
    k.insert(k.end(), v.begin(), v.end() - 1);
    return k;  // K then V
}

inline std::vector<uint8_t> serialize(nq_context *ctx, const nq_block *b) {
    size_t bound = 0, written = 0;
    FUZZ_CHECK(nq_block_serialize_bound(b, &bound) == NQ_OK);
    std::vector<uint8_t> out(bound);
    FUZZ_CHECK(nq_block_serialize(ctx, b, out.data(), out.size(), &written) == NQ_OK);
    FUZZ_CHECK(written <= bound);
    out.resize(written);
    if (written > 0) {  // one byte short of what it needs must be refused, not overrun
        std::vector<uint8_t> small(written - 1);
        size_t w2 = 0;
        FUZZ_CHECK(nq_block_serialize(ctx, b, small.data(), small.size(), &w2) == NQ_ERR_BUFFER_TOO_SMALL);
    }
    return out;
}

}  // namespace nqfuzz
