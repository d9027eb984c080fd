// The archive form: the resident block with positions delta-coded, each section zstd-
// compressed when that makes it smaller, and an XXH3-64 checksum over everything.
// docs/FORMAT.md describes the bytes.
#include <cinttypes>
#include <new>
#include <xxhash.h>
// zstd's stable API only: the library links the system's shared libzstd, whose
// experimental section (ZSTD_STATIC_LINKING_ONLY) may change in any release. zstd's
// own scratch therefore comes from malloc, not the context's allocator.
#include <zstd.h>
#include <zstd_errors.h>

#include "../backend.h"
#include "../api/internal.h"
#include "../api/fp_env.h"
#include "header_info.h"

namespace nq {
namespace {

constexpr uint32_t kArchiveMagic = 0x414b514eu;  // "NQKA"
constexpr uint32_t kBlockMagicLE = 0x424b514eu;  // "NQKB"
constexpr uint16_t kArchiveVersion = 1;
constexpr size_t kPrefix = 16, kEntry = 24, kChecksum = 8;
enum Method : uint8_t { kStored = 0, kZstd = 1 };
enum Filter : uint8_t { kNoFilter = 0, kDelta = 1 };

template <class T> void put(uint8_t *d, T v) { std::memcpy(d, &v, sizeof v); }
template <class T> T get(const uint8_t *s) {
    T v;
    std::memcpy(&v, s, sizeof v);
    return v;
}

uint32_t load_pos(const uint8_t *p, size_t i, uint32_t width) {
    if (width == 2) return get<uint16_t>(p + i * 2);
    return get<uint32_t>(p + i * 4);
}

void store_pos(uint8_t *p, size_t i, uint32_t width, uint32_t v) {
    if (width == 2)
        put<uint16_t>(p + i * 2, (uint16_t)v);
    else
        put<uint32_t>(p + i * 4, v);
}

// Delta along each row of positions (in place on a copy), wrapping at the width.
void delta_encode(uint8_t *v, size_t rows, size_t n, uint32_t width) {
    for (size_t r = 0; r < rows; ++r)
        for (size_t i = n; i-- > 1;)
            store_pos(v, r * n + i, width, load_pos(v, r * n + i, width) - load_pos(v, r * n + i - 1, width));
}

// Undoes delta_encode and checks that every row is strictly increasing and that
// base + offset stays below 2^32.
bool delta_decode_check(uint8_t *bytes, size_t rows, size_t n, uint32_t width, uint64_t base) {
    const uint64_t limit = width == 2 ? 0xffffull : 0xffffffffull;
    for (size_t r = 0; r < rows; ++r) {
        uint64_t prev = 0;
        for (size_t i = 0; i < n; ++i) {
            uint64_t d = load_pos(bytes, r * n + i, width);
            uint64_t cur = i ? prev + d : d;
            if ((i && d == 0) || cur > limit || base + cur > 0xffffffffull) return false;
            store_pos(bytes, r * n + i, width, (uint32_t)cur);
            prev = cur;
        }
    }
    return true;
}

struct Scratch {
    const MemoryHooks &mem;
    void *p = nullptr;
    ~Scratch() { mem.release(p); }
};

}  // namespace
}  // namespace nq

using namespace nq;

extern "C" NQ_API nq_status nq_block_serialize_bound(const nq_block *b, size_t *bytes) {
    clear_error();
    if (!b) return fail(NQ_ERR_INVALID_ARGUMENT, "blk is NULL");
    if (!bytes) return fail(NQ_ERR_INVALID_ARGUMENT, "bytes is NULL");
    size_t n = kPrefix + kHeaderBytes + kNumSections * kEntry + kChecksum;
    for (int s = 0; s < kNumSections; ++s)
        if (b->g.length[s]) n += ZSTD_compressBound((size_t)b->g.length[s]);
    *bytes = n;
    return NQ_OK;
}

extern "C" NQ_API nq_status nq_block_serialize(nq_context *ctx, const nq_block *b, void *dst_v, size_t cap,
                                               size_t *written) {
    clear_error();
    if (!ctx) return fail(NQ_ERR_INVALID_ARGUMENT, "ctx is NULL");
    if (!b) return fail(NQ_ERR_INVALID_ARGUMENT, "blk is NULL");
    if (!dst_v) return fail(NQ_ERR_INVALID_ARGUMENT, "dst is NULL");
    if (!written) return fail(NQ_ERR_INVALID_ARGUMENT, "written is NULL");
    if (b->memory != NQ_MEMORY_HOST) return fail(NQ_ERR_UNSUPPORTED, "serialising a device block: copy it to host first");
    uint8_t *dst = static_cast<uint8_t *>(dst_v);
    const BlockGeometry &g = b->g;
    int present = 0;
    for (int s = 0; s < kNumSections; ++s) present += g.length[s] ? 1 : 0;
    const size_t table = kPrefix + kHeaderBytes;
    size_t cur = table + (size_t)present * kEntry;
    if (cap < cur + kChecksum) return fail(NQ_ERR_BUFFER_TOO_SMALL, "capacity %zu bytes is too small", cap);

    const int level = ctx->cfg.archive_zstd_level;
    ZSTD_CCtx *zc = level >= 0 ? ZSTD_createCCtx() : nullptr;
    if (level >= 0 && !zc) return fail(NQ_ERR_OUT_OF_MEMORY, "creating a zstd context failed");
    struct Free {
        ZSTD_CCtx *z;
        ~Free() { ZSTD_freeCCtx(z); }
    } free_zc{zc};
    Scratch pos_copy{ctx->mem};

    int e = 0;
    for (int s = 0; s < kNumSections; ++s) {
        const size_t len = (size_t)g.length[s];
        if (!len) continue;
        const uint8_t *src = b->data + g.offset[s];
        uint8_t filter = kNoFilter;
        if (s == kSecPositions) {
            pos_copy.p = ctx->mem.alloc(len, 64);
            if (!pos_copy.p) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating %zu bytes for positions failed", len);
            std::memcpy(pos_copy.p, src, len);
            delta_encode(static_cast<uint8_t *>(pos_copy.p), g.pos_rows, b->h.tokens_kept, g.pos_bytes);
            src = static_cast<const uint8_t *>(pos_copy.p);
            filter = kDelta;
        }
        uint8_t method = kStored;
        size_t stored = len;
        const size_t room = cap - kChecksum - cur;
        if (zc) {
            size_t z = ZSTD_compressCCtx(zc, dst + cur, room, src, len, level);
            // A section that does not shrink (or fit) is stored; zstd running out of
            // memory fails the call rather than silently changing the archive bytes.
            if (ZSTD_isError(z) && ZSTD_getErrorCode(z) == ZSTD_error_memory_allocation)
                return fail(NQ_ERR_OUT_OF_MEMORY, "zstd ran out of memory compressing section %d", s);
            if (!ZSTD_isError(z) && z < len) {
                method = kZstd;
                stored = z;
            }
        }
        if (method == kStored) {
            if (room < len) return fail(NQ_ERR_BUFFER_TOO_SMALL, "capacity %zu bytes is too small", cap);
            std::memcpy(dst + cur, src, len);
        }
        uint8_t *ent = dst + table + (size_t)e * kEntry;
        std::memset(ent, 0, kEntry);
        ent[0] = (uint8_t)s;
        ent[1] = method;
        ent[2] = filter;
        put<uint64_t>(ent + 8, len);
        put<uint64_t>(ent + 16, stored);
        cur += stored;
        ++e;
    }
    const size_t total = cur + kChecksum;
    put<uint32_t>(dst, kArchiveMagic);
    put<uint16_t>(dst + 4, kArchiveVersion);
    put<uint16_t>(dst + 6, (uint16_t)present);
    put<uint64_t>(dst + 8, total);
    std::memcpy(dst + kPrefix, b->data, kHeaderBytes);
    put<uint64_t>(dst + cur, XXH3_64bits(dst, cur));
    *written = total;
    return NQ_OK;
}

extern "C" NQ_API nq_status nq_block_deserialize(nq_context *ctx, const void *src_v, size_t len, nq_block **out) {
    clear_error();
    DefaultFpEnv fp_env;  // results independent of the caller's MXCSR
    if (!out) return fail(NQ_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = nullptr;
    if (!ctx) return fail(NQ_ERR_INVALID_ARGUMENT, "ctx is NULL");
    if (!src_v) return fail(NQ_ERR_INVALID_ARGUMENT, "src is NULL");
    const uint8_t *src = static_cast<const uint8_t *>(src_v);
    if (len >= 4 && get<uint32_t>(src) == kBlockMagicLE)
        return fail(NQ_ERR_VERSION, "these bytes are a resident block image, not an archive (use nq_block_serialize)");
    if (len >= 4 && get<uint32_t>(src) != kArchiveMagic)
        return fail(NQ_ERR_VERSION, "not a nexusquant archive (magic %08x)", get<uint32_t>(src));
    if (len < kPrefix + kHeaderBytes + kChecksum)
        return fail(NQ_ERR_TRUNCATED, "%zu bytes: an archive has at least %zu", len, kPrefix + kHeaderBytes + kChecksum);
    const uint16_t version = get<uint16_t>(src + 4);
    if (version != kArchiveVersion) return fail(NQ_ERR_VERSION, "archive version %u (this library reads 1)", version);
    const uint64_t total = get<uint64_t>(src + 8);
    if (total > len) return fail(NQ_ERR_TRUNCATED, "archive says %" PRIu64 " bytes, only %zu given", total, len);
    if (total < len) return fail(NQ_ERR_CORRUPT, "archive says %" PRIu64 " bytes, %zu given", total, len);
    if (XXH3_64bits(src, (size_t)total - kChecksum) != get<uint64_t>(src + total - kChecksum))
        return fail(NQ_ERR_CORRUPT, "checksum mismatch: the bytes were changed or damaged");

    BlockHeader h;
    if (get<uint32_t>(src + kPrefix) != kBlockMagicLE || get<uint16_t>(src + kPrefix + 4) != kFormatVersion ||
        get<uint16_t>(src + kPrefix + 6) != kHeaderBytes)
        return fail(NQ_ERR_VERSION, "unknown block header (magic/version/size)");
    header_read(src + kPrefix, &h);
    if (const char *why = header_validate(h)) return fail(NQ_ERR_CORRUPT, "%s", why);
    if (!shape_matches(ctx, h))
        return fail(NQ_ERR_INVALID_ARGUMENT, "the block has %u heads of dim %u, the context %u heads of dim %u",
                    (unsigned)h.num_heads, (unsigned)h.head_dim, ctx->cfg.num_kv_heads, ctx->cfg.head_dim);
    const BlockGeometry g = block_geometry(h);
    if (h.total_bytes != g.total) return fail(NQ_ERR_CORRUPT, "header.total_bytes does not match the geometry");

    const uint16_t n = get<uint16_t>(src + 6);
    const size_t table = kPrefix + kHeaderBytes;
    if (n > kNumSections || table + (size_t)n * kEntry > total - kChecksum)
        return fail(NQ_ERR_CORRUPT, "section count %u impossible", n);
    // The header alone decides how much memory the block takes, and a few hundred bytes
    // of header can ask for terabytes. Before allocating, require every section the
    // geometry needs to be listed with its exact length and to fit in what its stored
    // bytes can expand to, so that the allocation is bounded by the input.
    {
        size_t at = table + (size_t)n * kEntry;
        int need = 0;
        for (uint16_t e = 0; e < n; ++e) {
            const uint8_t *ent = src + table + (size_t)e * kEntry;
            const int s = ent[0];
            const uint64_t raw = get<uint64_t>(ent + 8), stored = get<uint64_t>(ent + 16);
            if (s >= kNumSections || s < need || raw != g.length[s] || stored > total - kChecksum - at)
                return fail(NQ_ERR_CORRUPT, "section %u: id %d, length %" PRIu64 " or stored length %" PRIu64
                            " does not match the header", e, s, raw, stored);
            for (; need < s; ++need)
                if (g.length[need]) return fail(NQ_ERR_CORRUPT, "section %d missing", need);
            need = s + 1;
            if (ent[1] == kZstd) {
                // One zstd frame that records its content size, as the writer makes it
                // (ZSTD_compressCCtx): the frame must span the section and declare raw.
                const unsigned long long content = ZSTD_getFrameContentSize(src + at, (size_t)stored);
                const size_t frame = ZSTD_findFrameCompressedSize(src + at, (size_t)stored);
                if (ZSTD_isError(frame) || frame != stored || content != raw)
                    return fail(NQ_ERR_CORRUPT, "section %d: zstd data is not one frame of %" PRIu64 " bytes", s, raw);
            } else if (stored != raw) {
                return fail(NQ_ERR_CORRUPT, "section %d: stored length differs from raw", s);
            }
            at += (size_t)stored;
        }
        for (; need < kNumSections; ++need)
            if (g.length[need]) return fail(NQ_ERR_CORRUPT, "section %d missing", need);
    }
    nq_block *b = nullptr;
    NQ_TRY(block_create(ctx->mem, h, nullptr, 0, &b));
    std::memset(b->data, 0, (size_t)g.total);
    header_write(h, b->data);
    ZSTD_DCtx *zd = nullptr;
    nq_status st = NQ_OK;
    size_t cur = table + (size_t)n * kEntry;
    int next = 0;
    for (uint16_t e = 0; e < n && st == NQ_OK; ++e) {
        const uint8_t *ent = src + table + (size_t)e * kEntry;
        const int s = ent[0];
        const uint8_t method = ent[1], filter = ent[2];
        const uint64_t raw = get<uint64_t>(ent + 8), stored = get<uint64_t>(ent + 16);
        if (s < next || s >= kNumSections) { st = fail(NQ_ERR_CORRUPT, "section %u: id %d out of order", e, s); break; }
        for (; next < s; ++next)
            if (g.length[next]) { st = fail(NQ_ERR_CORRUPT, "section %d missing", next); break; }
        if (st != NQ_OK) break;
        next = s + 1;
        if (raw != g.length[s] || raw == 0) { st = fail(NQ_ERR_CORRUPT, "section %d: length %" PRIu64 ", expected %" PRIu64, s, raw, g.length[s]); break; }
        if (ent[3] || get<uint32_t>(ent + 4)) { st = fail(NQ_ERR_CORRUPT, "section %d: reserved bytes set", s); break; }
        if (filter > kDelta || (filter == kDelta) != (s == kSecPositions)) { st = fail(NQ_ERR_CORRUPT, "section %d: bad filter %u", s, filter); break; }
        if (stored > total - kChecksum - cur) { st = fail(NQ_ERR_CORRUPT, "section %d: stored length past the end", s); break; }
        uint8_t *dst = b->data + g.offset[s];
        if (method == kStored) {
            if (stored != raw) { st = fail(NQ_ERR_CORRUPT, "section %d: stored length differs from raw", s); break; }
            std::memcpy(dst, src + cur, (size_t)raw);
        } else if (method == kZstd) {
            if (!zd && !(zd = ZSTD_createDCtx())) { st = fail(NQ_ERR_OUT_OF_MEMORY, "creating a zstd context failed"); break; }
            size_t r = ZSTD_decompressDCtx(zd, dst, (size_t)raw, src + cur, (size_t)stored);
            if (ZSTD_isError(r) && ZSTD_getErrorCode(r) == ZSTD_error_memory_allocation) {
                st = fail(NQ_ERR_OUT_OF_MEMORY, "zstd ran out of memory decompressing section %d", s);
                break;
            }
            if (ZSTD_isError(r) || r != raw) { st = fail(NQ_ERR_CORRUPT, "section %d: zstd data invalid", s); break; }
        } else {
            st = fail(NQ_ERR_CORRUPT, "section %d: unknown method %u", s, method);
            break;
        }
        if (filter == kDelta && !delta_decode_check(dst, g.pos_rows, h.tokens_kept, g.pos_bytes, h.first_position))
            st = fail(NQ_ERR_CORRUPT, "positions are not strictly increasing or exceed 2^32 - 1");
        cur += (size_t)stored;
    }
    if (st == NQ_OK)
        for (; next < kNumSections; ++next)
            if (g.length[next]) { st = fail(NQ_ERR_CORRUPT, "section %d missing", next); break; }
    if (st == NQ_OK && cur != total - kChecksum) st = fail(NQ_ERR_CORRUPT, "bytes between the sections and the checksum");
    ZSTD_freeDCtx(zd);
    if (st != NQ_OK) {
        nq_block_free(b);
        return st;
    }
    *out = b;
    return NQ_OK;
}

extern "C" NQ_API nq_status nq_block_peek(const void *bytes, size_t len, nq_block_peek_info *out) {
    clear_error();
    if (!bytes) return fail(NQ_ERR_INVALID_ARGUMENT, "bytes is NULL");
    if (!out) return fail(NQ_ERR_INVALID_ARGUMENT, "out is NULL");
    const uint8_t *p = static_cast<const uint8_t *>(bytes);
    if (len < 4) return fail(NQ_ERR_TRUNCATED, "%zu bytes: too few for any block", len);
    nq_block_peek_info i{};
    const uint32_t magic = get<uint32_t>(p);
    size_t at = 0;
    if (magic == kArchiveMagic) {
        if (len < kPrefix + kHeaderBytes)
            return fail(NQ_ERR_TRUNCATED, "%zu bytes: an archive's prefix and header take %zu", len,
                        kPrefix + kHeaderBytes);
        const uint16_t version = get<uint16_t>(p + 4);
        if (version != kArchiveVersion)
            return fail(NQ_ERR_VERSION, "archive version %u (this library reads 1)", version);
        i.is_archive = 1;
        at = kPrefix;
    } else if (magic == kBlockMagicLE) {
        if (len < kHeaderBytes)
            return fail(NQ_ERR_TRUNCATED, "%zu bytes: a block header takes %u", len, (unsigned)kHeaderBytes);
    } else {
        return fail(NQ_ERR_VERSION, "not a nexusquant archive or block image (magic %08x)", magic);
    }
    if (get<uint32_t>(p + at) != kBlockMagicLE || get<uint16_t>(p + at + 4) != kFormatVersion ||
        get<uint16_t>(p + at + 6) != kHeaderBytes)
        return fail(NQ_ERR_VERSION, "unknown block header (magic/version/size)");
    BlockHeader h;
    header_read(p + at, &h);
    i.header_valid = header_validate(h) == nullptr && block_geometry(h).total == h.total_bytes;
    header_info_fields(h, i);
    i.first_position = (int64_t)h.first_position;
    i.resident_bytes = h.total_bytes;
    i.stored_bytes = i.is_archive ? get<uint64_t>(p + 8) : h.total_bytes;
    return write_sized(i, out, "nq_block_peek_info");
}
