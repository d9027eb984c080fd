// The archive form: serialise -> deserialise gives the identical block (digest and
// decode) at every zstd level; every single-byte corruption, every truncation, random
// garbage and resident images are rejected with a status, never a crash; tampered bytes
// with a recomputed checksum go through the header and table checks.
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

#include "api_harness.h"

using namespace nqt;

namespace {

struct Archived {
    Ctx ctx;
    Block block;
    std::vector<uint8_t> bytes;
};

// A block with every section present (per-head positions, scales, codes, fp16 tokens).
Archived make_archive(uint32_t H, uint32_t T, uint32_t D, int zstd_level, nq_evict_mode mode = NQ_EVICT_PER_HEAD,
                      float evict = 0.4f, int64_t span = 1) {
    nq_config c = plain_config(H, D, 3, 2);
    c.evict_fraction = evict;
    c.evict_mode = mode;
    c.sink_tokens = 2;
    c.recent_window = 3;
    c.fp16_sinks = 1;
    c.fp16_window = 2;
    c.rope.mode = NQ_ROPE_REMOVE;
    c.archive_zstd_level = zstd_level;
    Archived a{make_ctx(c), nullptr, {}};
    Tensor k(NQ_DTYPE_F16, Layout::HTD, H, T, D), v(NQ_DTYPE_F16, Layout::HTD, H, T, D);
    Values K = random_values(H, T, D), V = random_values(H, T, D);
    store(k, K);
    store(v, V);
    std::vector<int64_t> pos(T);
    int64_t p = 0;
    for (uint32_t i = 0; i < T; ++i) {
        pos[i] = p;
        p += 1 + (int64_t)(u64() % (uint64_t)span);
    }
    nq_kv_desc kv = kv_desc(k, v, T);
    kv.positions = pos.data();
    a.block = compress(a.ctx.get(), kv);
    size_t bound = 0, written = 0;
    EXPECT_EQ(nq_block_serialize_bound(a.block.get(), &bound), NQ_OK);
    a.bytes.assign(bound, 0);
    EXPECT_EQ(nq_block_serialize(a.ctx.get(), a.block.get(), a.bytes.data(), bound, &written), NQ_OK)
        << nq_last_error();
    EXPECT_LE(written, bound);
    a.bytes.resize(written);
    return a;
}

nq_status try_read(nq_context *ctx, const std::vector<uint8_t> &bytes, size_t len, Block *out = nullptr) {
    // A copy of exactly len bytes on the heap: reading past it is a detectable bug.
    std::vector<uint8_t> buf(bytes.begin(), bytes.begin() + len);
    nq_block *b = reinterpret_cast<nq_block *>(&buf);  // must be overwritten
    nq_status st = nq_block_deserialize(ctx, len ? buf.data() : bytes.data(), len, &b);
    if (st != NQ_OK) {
        EXPECT_EQ(b, nullptr) << "failed deserialise left a handle";
        EXPECT_STRNE(nq_last_error(), "");
    }
    if (out)
        out->reset(b);
    else
        nq_block_free(st == NQ_OK ? b : nullptr);
    return st;
}

bool is_rejection(nq_status st) { return st == NQ_ERR_CORRUPT || st == NQ_ERR_TRUNCATED || st == NQ_ERR_VERSION; }

void rehash(std::vector<uint8_t> &a) {
    const uint64_t h = XXH3_64bits(a.data(), a.size() - 8);
    std::memcpy(a.data() + a.size() - 8, &h, 8);
}

}  // namespace

TEST(Archive, RoundTripGivesTheIdenticalBlock) {
    struct Case {
        uint32_t H, T, D;
        int level;
        nq_evict_mode mode;
        float evict;
        int64_t span;
    };
    const Case cases[] = {{1, 20, 8, 3, NQ_EVICT_PER_HEAD, 0.4f, 1},      {2, 300, 64, -1, NQ_EVICT_PER_HEAD, 0.5f, 3},
                          {3, 200, 32, 1, NQ_EVICT_HEAD_SHARED, 0.3f, 2}, {2, 100, 16, 19, NQ_EVICT_PAGED, 0.5f, 1},
                          {2, 64, 128, 0, NQ_EVICT_PER_HEAD, 0.0f, 1},    {2, 50, 16, 3, NQ_EVICT_PER_HEAD, 0.0f, 5000},
                          {4, 500, 16, 3, NQ_EVICT_PER_HEAD, 0.2f, 9000}};
    for (const Case &cs : cases) {
        SCOPED_TRACE("H " + std::to_string(cs.H) + " T " + std::to_string(cs.T) + " level " + std::to_string(cs.level));
        Archived a = make_archive(cs.H, cs.T, cs.D, cs.level, cs.mode, cs.evict, cs.span);
        ASSERT_TRUE(a.block);
        Block back;
        ASSERT_EQ(try_read(a.ctx.get(), a.bytes, a.bytes.size(), &back), NQ_OK) << nq_last_error();
        EXPECT_EQ(digest_of(back.get()), digest_of(a.block.get()));
        const void *d0, *d1;
        size_t n0, n1;
        ASSERT_EQ(nq_block_data(a.block.get(), &d0, &n0), NQ_OK);
        ASSERT_EQ(nq_block_data(back.get(), &d1, &n1), NQ_OK);
        ASSERT_EQ(n0, n1);
        EXPECT_EQ(std::memcmp(d0, d1, n0), 0);
        Decoded x = decode_all(a.ctx.get(), a.block.get()), y = decode_all(a.ctx.get(), back.get());
        EXPECT_EQ(x.k.x, y.k.x);
        EXPECT_EQ(x.v.x, y.v.x);
        nq_block_info i0 = info_of(a.block.get()), i1 = info_of(back.get());
        EXPECT_EQ(i0.first_position, i1.first_position);
        EXPECT_EQ(i0.last_position, i1.last_position);
        for (uint32_t h = 0; h < cs.H; ++h) EXPECT_EQ(positions_of(a.block.get(), h), positions_of(back.get(), h));
        // The archive never costs more than the resident bytes plus its framing.
        EXPECT_LE(a.bytes.size(), n0 + 16 + 8 * 24 + 8);  // header, 8 section entries (FORMAT.md 2), hash
        // A second serialisation is byte-identical.
        std::vector<uint8_t> again(a.bytes.size() + 64);
        size_t w = 0;
        ASSERT_EQ(nq_block_serialize(a.ctx.get(), back.get(), again.data(), again.size(), &w), NQ_OK);
        again.resize(w);
        EXPECT_EQ(again, a.bytes);
    }
}

TEST(Archive, EverySingleByteCorruptionIsDetected) {
    Archived a = make_archive(1, 20, 8, 3);
    ASSERT_TRUE(a.block);
    ASSERT_EQ(try_read(a.ctx.get(), a.bytes, a.bytes.size()), NQ_OK);
    for (size_t i = 0; i < a.bytes.size(); ++i)
        for (uint8_t x : {0x01, 0x10, 0x80, 0xff}) {
            std::vector<uint8_t> bad = a.bytes;
            bad[i] ^= x;
            nq_status st = try_read(a.ctx.get(), bad, bad.size());
            ASSERT_TRUE(is_rejection(st)) << "byte " << i << " ^ " << (int)x << ": " << nq_status_string(st);
        }
    // Without zstd (stored sections) too.
    Archived s = make_archive(1, 20, 8, -1);
    for (size_t i = 0; i < s.bytes.size(); ++i) {
        std::vector<uint8_t> bad = s.bytes;
        bad[i] ^= (uint8_t)(1u << below(8));
        ASSERT_TRUE(is_rejection(try_read(s.ctx.get(), bad, bad.size()))) << "byte " << i;
    }
}

TEST(Archive, EveryTruncationIsDetected) {
    Archived a = make_archive(2, 30, 16, 3);
    ASSERT_TRUE(a.block);
    for (size_t len = 0; len < a.bytes.size(); ++len)
        ASSERT_EQ(try_read(a.ctx.get(), a.bytes, len), NQ_ERR_TRUNCATED) << "len " << len << ": " << nq_last_error();
    std::vector<uint8_t> longer = a.bytes;
    longer.push_back(0);
    EXPECT_EQ(try_read(a.ctx.get(), longer, longer.size()), NQ_ERR_CORRUPT);
}

// Tampering with a valid checksum: the header and table checks must catch what makes
// the bytes inconsistent, and whatever is accepted must decode without harm.
TEST(Archive, TamperedBytesWithAValidChecksum) {
    Archived a = make_archive(2, 40, 16, 3);
    ASSERT_TRUE(a.block);
    std::set<nq_status> seen;
    int accepted = 0;
    for (size_t i = 0; i + 8 < a.bytes.size(); ++i)
        for (int rep = 0; rep < 4; ++rep) {
            std::vector<uint8_t> bad = a.bytes;
            bad[i] ^= rep == 0 ? 0xff : (uint8_t)(1u << below(8));
            rehash(bad);
            Block b;
            nq_status st = try_read(a.ctx.get(), bad, bad.size(), &b);
            seen.insert(st);
            ASSERT_TRUE(st == NQ_OK || is_rejection(st) || st == NQ_ERR_INVALID_ARGUMENT)
                << "byte " << i << ": " << nq_status_string(st) << " " << nq_last_error();
            if (st == NQ_OK) {  // payload bytes: a different but valid block
                ++accepted;
                nq_block_info info = info_of(b.get());
                ASSERT_LE(info.tokens_kept, info.tokens_in);
                Decoded d = decode_all(a.ctx.get(), b.get());
                ASSERT_EQ(d.k.T, info.tokens_kept);
                for (uint32_t h = 0; h < info.num_heads; ++h) {
                    std::vector<int64_t> p = positions_of(b.get(), h);
                    for (size_t j = 1; j < p.size(); ++j) ASSERT_LT(p[j - 1], p[j]) << "byte " << i;
                }
            }
        }
    EXPECT_GT(accepted, 0);
    EXPECT_TRUE(seen.count(NQ_ERR_CORRUPT));
    EXPECT_TRUE(seen.count(NQ_ERR_VERSION));
}

TEST(Archive, GarbageAndResidentImagesAreRejected) {
    Archived a = make_archive(1, 20, 8, 3);
    for (int rep = 0; rep < 3000; ++rep) {
        std::vector<uint8_t> g(below(600));
        for (auto &b : g) b = (uint8_t)below(256);
        if (rep % 3 == 1 && g.size() >= 16) {  // our magic and version, a plausible length
            std::memcpy(g.data(), a.bytes.data(), 8);
            const uint64_t n = g.size();
            std::memcpy(g.data() + 8, &n, 8);
        }
        if (rep % 3 == 2 && g.size() >= 16) {                // a real prefix and header, garbage after
            if (g.size() == a.bytes.size()) g.push_back(0);  // (not the whole archive)
            std::memcpy(g.data(), a.bytes.data(), std::min(g.size(), a.bytes.size()));
            const uint64_t n = g.size();
            std::memcpy(g.data() + 8, &n, 8);
            rehash(g);
        }
        nq_status st = try_read(a.ctx.get(), g, g.size());
        ASSERT_TRUE(is_rejection(st) || st == NQ_ERR_INVALID_ARGUMENT) << rep << ": " << nq_status_string(st);
    }
    const void *data;
    size_t n;
    ASSERT_EQ(nq_block_data(a.block.get(), &data, &n), NQ_OK);
    std::vector<uint8_t> image((const uint8_t *)data, (const uint8_t *)data + n);
    EXPECT_EQ(try_read(a.ctx.get(), image, image.size()), NQ_ERR_VERSION);
    std::vector<uint8_t> newer = a.bytes;
    newer[4] = 2;  // a later archive version
    rehash(newer);
    EXPECT_EQ(try_read(a.ctx.get(), newer, newer.size()), NQ_ERR_VERSION);
}

// A context of another shape cannot take the block; a too small buffer is refused and
// nothing past it is written.
TEST(Archive, WrongContextAndSmallBuffers) {
    Archived a = make_archive(2, 40, 16, 3);
    Ctx other = make_ctx(plain_config(2, 32));
    EXPECT_EQ(try_read(other.get(), a.bytes, a.bytes.size()), NQ_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(nq_last_error()).find("heads"), std::string::npos) << nq_last_error();
    const size_t need = a.bytes.size();
    for (size_t cap : {(size_t)0, (size_t)8, (size_t)100, need / 2, need - 9, need - 1}) {
        std::vector<uint8_t> buf(need + 32, 0xEE);
        size_t w = 12345;
        nq_status st = nq_block_serialize(a.ctx.get(), a.block.get(), buf.data(), cap, &w);
        EXPECT_EQ(st, NQ_ERR_BUFFER_TOO_SMALL) << "cap " << cap;
        for (size_t i = cap; i < buf.size(); ++i) ASSERT_EQ(buf[i], 0xEE) << "cap " << cap << " wrote byte " << i;
    }
    std::vector<uint8_t> exact(need);
    size_t w = 0;
    EXPECT_EQ(nq_block_serialize(a.ctx.get(), a.block.get(), exact.data(), need, &w), NQ_OK) << nq_last_error();
    EXPECT_EQ(w, need);
}

// nq_block_peek reads an archive's and a resident image's header without a context:
// the fields agree with nq_block_get_info of the block they came from, a reader can
// build its context from them, and anything that is not a block is refused.
TEST(Archive, PeekReadsTheHeaderWithoutAContext) {
    const uint32_t H = 1 + (uint32_t)(u64() % 4), D = 8 * (1 + (uint32_t)(u64() % 8)), T = 40 + (uint32_t)(u64() % 40);
    Archived a = make_archive(H, T, D, 3, NQ_EVICT_PER_HEAD, 0.4f, 3);
    nq_block_info bi{};
    bi.size = sizeof bi;
    ASSERT_EQ(nq_block_get_info(a.block.get(), &bi), NQ_OK);

    const void *image = nullptr;
    size_t image_bytes = 0;
    ASSERT_EQ(nq_block_data(a.block.get(), &image, &image_bytes), NQ_OK);
    std::vector<uint8_t> resident(static_cast<const uint8_t *>(image), static_cast<const uint8_t *>(image) + image_bytes);

    for (int archive = 0; archive < 2; ++archive) {
        const std::vector<uint8_t> &bytes = archive ? a.bytes : resident;
        nq_block_peek_info pk{};
        pk.size = sizeof pk;
        ASSERT_EQ(nq_block_peek(bytes.data(), bytes.size(), &pk), NQ_OK) << nq_last_error();
        EXPECT_EQ(pk.is_archive, (uint32_t)archive);
        EXPECT_EQ(pk.header_valid, 1u);
        EXPECT_EQ(pk.num_heads, bi.num_heads);
        EXPECT_EQ(pk.head_dim, bi.head_dim);
        EXPECT_EQ(pk.layer, bi.layer);
        EXPECT_EQ(pk.tokens_in, bi.tokens_in);
        EXPECT_EQ(pk.tokens_kept, bi.tokens_kept);
        EXPECT_EQ(pk.k_bits, bi.k_bits);
        EXPECT_EQ(pk.v_bits, bi.v_bits);
        EXPECT_EQ(pk.codec, bi.codec);
        EXPECT_EQ(pk.evict_mode, bi.evict_mode);
        EXPECT_EQ(pk.rope_mode, bi.rope_mode);
        EXPECT_EQ(pk.fp16_sinks, bi.fp16_sinks);
        EXPECT_EQ(pk.fp16_window, bi.fp16_window);
        EXPECT_EQ(pk.positions_per_head, bi.positions_per_head);
        EXPECT_EQ(pk.first_position, bi.first_position);
        EXPECT_EQ(pk.resident_bytes, bi.resident_bytes);
        EXPECT_EQ(pk.stored_bytes, (uint64_t)bytes.size());
        // The header alone: every shorter length is refused as truncated.
        const size_t need = archive ? 16 + 128 : 128;
        nq_block_peek_info short_pk{};
        short_pk.size = sizeof short_pk;
        EXPECT_EQ(nq_block_peek(bytes.data(), need, &short_pk), NQ_OK);
        EXPECT_EQ(nq_block_peek(bytes.data(), need - 1 - (size_t)(u64() % (need - 4)), &short_pk), NQ_ERR_TRUNCATED);
    }

    // A context built from the peeked shape reads the archive.
    nq_block_peek_info pk{};
    pk.size = sizeof pk;
    ASSERT_EQ(nq_block_peek(a.bytes.data(), a.bytes.size(), &pk), NQ_OK);
    nq_config c = plain_config(pk.num_heads, pk.head_dim);
    Ctx reader = make_ctx(c);
    Block back;
    ASSERT_EQ(try_read(reader.get(), a.bytes, a.bytes.size(), &back), NQ_OK) << nq_last_error();

    // A header whose fields contradict each other is reported, not trusted.
    std::vector<uint8_t> bad = a.bytes;
    bad[16 + 16] = 7;  // head_dim 7: not a multiple of 8
    bad[16 + 17] = 0;
    ASSERT_EQ(nq_block_peek(bad.data(), bad.size(), &pk), NQ_OK);
    EXPECT_EQ(pk.header_valid, 0u);
    EXPECT_EQ(pk.head_dim, 7u);

    // Not a block, an unknown version, NULL arguments, an uninitialised size.
    std::vector<uint8_t> junk(256);
    for (auto &x : junk) x = (uint8_t)u64();
    junk[0] = 'X';
    EXPECT_EQ(nq_block_peek(junk.data(), junk.size(), &pk), NQ_ERR_VERSION);
    std::vector<uint8_t> newer = a.bytes;
    newer[4] = 2;  // archive version 2
    EXPECT_EQ(nq_block_peek(newer.data(), newer.size(), &pk), NQ_ERR_VERSION);
    newer = a.bytes;
    newer[16 + 4] = 9;  // block header version 9
    EXPECT_EQ(nq_block_peek(newer.data(), newer.size(), &pk), NQ_ERR_VERSION);
    EXPECT_EQ(nq_block_peek(nullptr, 1000, &pk), NQ_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(nq_block_peek(a.bytes.data(), a.bytes.size(), nullptr), NQ_ERR_INVALID_ARGUMENT);
    pk.size = 3;
    EXPECT_EQ(nq_block_peek(a.bytes.data(), a.bytes.size(), &pk), NQ_ERR_INVALID_ARGUMENT);
}
