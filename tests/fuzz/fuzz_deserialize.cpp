// Arbitrary bytes -> nq_block_deserialize. Whatever it accepts must describe itself
// consistently, decode (whole and by range) without fault, survive being appended to a
// sequence, and serialise to an archive that deserialises to the same block and
// serialises to the same bytes again.
#include <xxhash.h>

#include "fuzz_util.h"

using namespace nqfuzz;

namespace {

// The context must match the block's heads and head_dim, or deserialisation stops at
// that check; peek at them (the library validates them, this only chooses a context).
nq_context *context_for(const uint8_t *data, size_t size) {
    uint16_t head_dim = 64, heads = 2;
    if (size >= 16 + 20) {
        std::memcpy(&head_dim, data + 16 + 16, 2);
        std::memcpy(&heads, data + 16 + 18, 2);
    }
    if (head_dim < 8 || head_dim > 512 || head_dim % 8) head_dim = 64;
    if (heads < 1 || heads > 64) heads = 2;
    nq_config cfg;
    nq_config_init(&cfg);
    cfg.head_dim = head_dim;
    cfg.num_kv_heads = heads;
    nq_context *ctx = nullptr;
    FUZZ_CHECK(nq_context_create(&cfg, &ctx) == NQ_OK);
    return ctx;
}

// Random mutations almost never keep the XXH3 checksum right, which would stop the
// fuzzer at the first check. An input whose length field (bytes 8..15) has a zero top
// byte gets that field set to its real length and a correct checksum, so the parser
// behind the checksum is explored; other inputs are passed on as they are.
void repair(std::vector<uint8_t> &a) {
    constexpr size_t kMin = 16 + 128 + 8;
    if (a.size() < kMin || a[15] != 0) return;
    const uint64_t total = a.size();
    std::memcpy(a.data() + 8, &total, 8);
    const uint64_t sum = XXH3_64bits(a.data(), a.size() - 8);
    std::memcpy(a.data() + a.size() - 8, &sum, 8);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    nq_context *ctx = context_for(data, size);
    // A copy of exactly `size` bytes, so that AddressSanitizer sees any read past it.
    std::vector<uint8_t> bytes(data, data + size);
    repair(bytes);
    nq_block *b = reinterpret_cast<nq_block *>(&bytes);  // must be reset to NULL
    const nq_status st = checked(nq_block_deserialize(ctx, size ? bytes.data() : data, size, &b));
    if (st != NQ_OK) {
        FUZZ_CHECK(b == nullptr);
        nq_context_free(ctx);
        return 0;
    }
    FUZZ_CHECK(b != nullptr);
    const BlockSummary s = describe(b);
    const nq_block_info &info = s.info;

    // Decode everything unless the output would be huge (an archive of a few KB can
    // legitimately describe a block of many MB when its sections compress well).
    const uint64_t elems = (uint64_t)info.num_heads * info.tokens_kept * info.head_dim;
    if (elems <= ((uint64_t)1 << 22)) {
        nq_status dst;
        std::vector<uint8_t> all = decode_contiguous(ctx, b, info, 0, info.tokens_kept, NQ_DTYPE_F32, &dst);
        FUZZ_CHECK(dst == NQ_OK);
        decode_contiguous(ctx, b, info, 0, info.tokens_kept, NQ_DTYPE_F16, &dst);
        FUZZ_CHECK(dst == NQ_OK);
        // A range decodes to the same values as the same rows of the whole.
        const uint32_t lo = info.tokens_kept / 3, hi = info.tokens_kept - info.tokens_kept / 4;
        std::vector<uint8_t> part = decode_contiguous(ctx, b, info, lo, hi, NQ_DTYPE_F32, &dst);
        FUZZ_CHECK(dst == NQ_OK);
        const size_t row = (size_t)info.head_dim * 4, n = hi - lo;
        for (uint32_t kv = 0; kv < 2; ++kv)
            for (uint32_t h = 0; h < info.num_heads; ++h) {
                const uint8_t *whole = all.data() + ((size_t)kv * info.num_heads * info.tokens_kept +
                                                     (size_t)h * info.tokens_kept + lo) * row;
                const uint8_t *got = part.data() + ((size_t)kv * info.num_heads * n + (size_t)h * n) * row;
                FUZZ_CHECK(std::memcmp(whole, got, n * row) == 0);
            }
        decode_contiguous(ctx, b, info, info.tokens_kept, info.tokens_kept + 1, NQ_DTYPE_F32, &dst);
        FUZZ_CHECK(dst == NQ_ERR_OUT_OF_RANGE);
    }

    // Archive -> block -> archive is a fixed point.
    const std::vector<uint8_t> a1 = serialize(ctx, b);
    nq_block *b2 = nullptr;
    FUZZ_CHECK(nq_block_deserialize(ctx, a1.data(), a1.size(), &b2) == NQ_OK);
    FUZZ_CHECK(describe(b2).digest == s.digest);
    FUZZ_CHECK(serialize(ctx, b2) == a1);
    nq_block_free(b2);

    // A sequence takes the block over; decoding through it gives the block's rows.
    nq_sequence *seq = nullptr;
    FUZZ_CHECK(nq_sequence_create(ctx, info.layer, &seq) == NQ_OK);
    if (checked(nq_sequence_append_block(seq, b)) == NQ_OK) {
        uint64_t tokens = 0, resident = 0;
        FUZZ_CHECK(nq_sequence_totals(seq, &tokens, &resident, nullptr) == NQ_OK);
        FUZZ_CHECK(tokens == info.tokens_kept && resident == info.resident_bytes);
        FUZZ_CHECK(nq_sequence_num_blocks(seq) == 1 && nq_sequence_block(seq, 0) == b);
        b = nullptr;
    }
    nq_sequence_free(seq);
    nq_block_free(b);
    nq_context_free(ctx);
    return 0;
}
