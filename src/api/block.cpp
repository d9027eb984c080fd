// Block handles: creation, queries, freeing.
#include <algorithm>
#include <cstdint>
#include <new>
#include <xxhash.h>

#include "../backend.h"
#include "internal.h"
#include "../format/header_info.h"

namespace nq {

nq_status block_create_in(const MemoryHooks &mem, const BlockHeader &h, nq_memory memory, int32_t device,
                          void *external, size_t external_cap, nq_block **out) {
    BlockGeometry g = block_geometry(h);
    void *hp = mem.alloc(sizeof(nq_block), alignof(nq_block));
    if (!hp) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating a block handle failed");
    nq_block *b = new (hp) nq_block();
    b->h = h;
    b->h.total_bytes = g.total;
    b->g = g;
    b->mem = mem;
    b->memory = memory;
    b->device = memory == NQ_MEMORY_HOST ? 0 : device;
    b->max_position = -1;
    if (external) {
        if (external_cap < g.total) {
            mem.release(hp);
            return fail(NQ_ERR_BUFFER_TOO_SMALL, "buffer of %zu bytes, block needs %llu", external_cap,
                        (unsigned long long)g.total);
        }
        b->data = static_cast<uint8_t *>(external);
        b->owns_data = false;
    } else {
        b->data = static_cast<uint8_t *>(mem.alloc((size_t)g.total, memory == NQ_MEMORY_HOST ? 64 : 256, memory,
                                                   b->device));
        if (!b->data) {
            mem.release(hp);
            return fail(NQ_ERR_OUT_OF_MEMORY, "allocating a block of %llu bytes failed%s", (unsigned long long)g.total,
                        memory == NQ_MEMORY_HOST ? "" : " (device memory: config.allocator)");
        }
        b->owns_data = true;
    }
    *out = b;
    return NQ_OK;
}

nq_status block_create(const MemoryHooks &mem, const BlockHeader &h, void *external, size_t external_cap,
                       nq_block **out) {
    return block_create_in(mem, h, NQ_MEMORY_HOST, 0, external, external_cap, out);
}

int64_t block_position(const nq_block &b, uint32_t head, uint32_t j);

}  // namespace nq

using namespace nq;

extern "C" NQ_API void nq_block_free(nq_block *b) {
    if (!b) return;
    MemoryHooks mem = b->mem;
    if (b->owns_data) mem.release(b->data, b->memory, b->device);
    b->~nq_block();
    mem.release(b);
}

extern "C" NQ_API nq_status nq_block_get_info(const nq_block *b, nq_block_info *out) {
    clear_error();
    if (!b) return fail(NQ_ERR_INVALID_ARGUMENT, "blk is NULL");
    if (!out) return fail(NQ_ERR_INVALID_ARGUMENT, "out is NULL");
    const BlockHeader &h = b->h;
    const BlockGeometry &g = b->g;
    nq_block_info i{};
    header_info_fields(h, i);
    i.memory = b->memory;
    i.device = b->device;
    if (b->memory == NQ_MEMORY_HOST) {
        int64_t first = INT64_MAX, last = -1;
        for (uint32_t hd = 0; hd < (g.pos_rows > 1 ? h.num_heads : 1u); ++hd) {
            first = std::min(first, block_position(*b, hd, 0));
            last = std::max(last, block_position(*b, hd, h.tokens_kept - 1));
        }
        i.first_position = first;
        i.last_position = last;
    }
    i.original_bytes = 4ull * h.num_heads * h.tokens_in * h.head_dim;
    i.resident_bytes = g.total;
    i.ratio = (double)i.original_bytes / (double)g.total;
    i.header_bytes = kHeaderBytes;
    i.position_bytes = g.length[kSecPositions];
    i.scale_bytes = g.length[kSecKScales] + g.length[kSecVScales];
    i.code_bytes = g.length[kSecKCodes] + g.length[kSecVCodes];
    i.fp16_bytes = g.length[kSecKRaw] + g.length[kSecVRaw];
    i.key_mean_bytes = g.length[kSecKMean];
    i.padding_bytes =
        g.total - kHeaderBytes - i.position_bytes - i.scale_bytes - i.code_bytes - i.fp16_bytes - i.key_mean_bytes;
    return write_sized(i, out, "nq_block_info");
}

extern "C" NQ_API nq_status nq_block_positions(const nq_block *b, uint32_t head, uint32_t begin, uint32_t end,
                                               int64_t *dst) {
    clear_error();
    if (!b) return fail(NQ_ERR_INVALID_ARGUMENT, "blk is NULL");
    if (head >= b->h.num_heads)
        return fail(NQ_ERR_OUT_OF_RANGE, "head %u: the block has %u heads", head, (unsigned)b->h.num_heads);
    if (begin > end || end > b->h.tokens_kept)
        return fail(NQ_ERR_OUT_OF_RANGE, "token range [%u, %u) outside the block's %u tokens", begin, end,
                    b->h.tokens_kept);
    if (end > begin && !dst) return fail(NQ_ERR_INVALID_ARGUMENT, "dst is NULL");
    if (b->memory != NQ_MEMORY_HOST) return fail(NQ_ERR_UNSUPPORTED, "positions of a device block: copy it to host");
    for (uint32_t j = begin; j < end; ++j) dst[j - begin] = block_position(*b, head, j);
    return NQ_OK;
}

extern "C" NQ_API nq_status nq_block_data(const nq_block *b, const void **data, size_t *bytes) {
    clear_error();
    if (!b) return fail(NQ_ERR_INVALID_ARGUMENT, "blk is NULL");
    if (!data || !bytes) return fail(NQ_ERR_INVALID_ARGUMENT, "data or bytes is NULL");
    *data = b->data;
    *bytes = (size_t)b->g.total;
    return NQ_OK;
}

extern "C" NQ_API nq_status nq_block_digest(const nq_block *b, uint64_t *digest) {
    clear_error();
    if (!b) return fail(NQ_ERR_INVALID_ARGUMENT, "blk is NULL");
    if (!digest) return fail(NQ_ERR_INVALID_ARGUMENT, "digest is NULL");
    if (b->memory != NQ_MEMORY_HOST) return fail(NQ_ERR_UNSUPPORTED, "digest of a device block: copy it to host");
    *digest = XXH3_64bits(b->data, (size_t)b->g.total);
    return NQ_OK;
}

extern "C" NQ_API nq_status nq_block_copy(nq_context *ctx, const nq_block *src, nq_memory memory, int32_t device,
                                          void *dst, size_t capacity, void *stream, nq_block **out) {
    clear_error();
    if (!out) return fail(NQ_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = nullptr;
    if (!ctx) return fail(NQ_ERR_INVALID_ARGUMENT, "ctx is NULL");
    if (!src) return fail(NQ_ERR_INVALID_ARGUMENT, "src is NULL");
    if (memory != NQ_MEMORY_HOST && memory != NQ_MEMORY_CUDA && memory != NQ_MEMORY_HIP)
        return fail(NQ_ERR_INVALID_ARGUMENT, "memory is %d: not an nq_memory", (int)memory);
    if (dst && (uintptr_t)dst % 16) return fail(NQ_ERR_INVALID_ARGUMENT, "dst must be 16-byte aligned");
    const BackendOps *dst_be = backend_for(memory), *src_be = backend_for(src->memory);
    if ((memory != NQ_MEMORY_HOST || src->memory != NQ_MEMORY_HOST) && !have_device_backend())
        return fail(NQ_ERR_BACKEND_UNAVAILABLE, "device memory, but this library was built without a GPU backend");
    if (!dst_be || !src_be) {
        const BackendOps *dev = memory != NQ_MEMORY_HOST && dst_be ? dst_be : src_be;
        if (!dev || dev->memory == NQ_MEMORY_HOST) dev = nullptr;
        size_t nb = 0;
        const BackendOps *const *all = backends_registered(&nb);
        for (size_t i = 0; !dev && i < nb; ++i)
            if (all[i]->memory != NQ_MEMORY_HOST) dev = all[i];
        return fail(NQ_ERR_BACKEND_UNAVAILABLE, "this library's GPU backend is %s", dev->name);
    }
    if (memory != NQ_MEMORY_HOST && src->memory != NQ_MEMORY_HOST && device != src->device)
        return fail(NQ_ERR_UNSUPPORTED, "copies between two devices are not supported (device %d to %d)", src->device,
                    device);
    if (memory != NQ_MEMORY_HOST && dst_be->device_check) NQ_TRY(dst_be->device_check(device));
    (void)stream;
    int64_t maxp = src->max_position;
    if (src->memory == NQ_MEMORY_HOST) {
        maxp = -1;
        for (uint32_t hd = 0; hd < (src->g.pos_rows > 1 ? src->h.num_heads : 1u); ++hd)
            maxp = std::max(maxp, block_position(*src, hd, src->h.tokens_kept - 1));
    }
    nq_block *b = nullptr;
    NQ_TRY(block_create_in(ctx->mem, src->h, memory, device, dst, capacity, &b));
    b->max_position = maxp;
    const size_t n = (size_t)src->g.total;
    if (memory == NQ_MEMORY_HOST && src->memory == NQ_MEMORY_HOST) {
        std::memcpy(b->data, src->data, n);
    } else {
        const BackendOps *dev = memory != NQ_MEMORY_HOST ? dst_be : src_be;
        nq_status st = dev->copy(b->data, memory, src->data, src->memory, n,
                                 memory != NQ_MEMORY_HOST ? device : src->device, stream);
        if (st != NQ_OK) {
            nq_block_free(b);
            return st;
        }
    }
    *out = b;
    return NQ_OK;
}
