// Descriptor fields from the input -> validation, and, when the library accepts them,
// compression of synthetic data laid out exactly as described. The K/V (and score and
// query) buffers span precisely the elements the descriptor says the library may touch,
// so AddressSanitizer flags any access outside them. Oracles: compressing through the
// fuzzed layout gives the same block as compressing a contiguous copy of the same
// logical tensor, and decoding into a fuzzed output layout writes the same values as
// decoding into a contiguous one.
// Invalid enum values (any int, as a C caller may store) are drawn too: the header
// gives the enums an int base in C++, so the library may load and reject them.
#include "fuzz_util.h"

using namespace nqfuzz;

namespace {

constexpr int64_t kMaxSpan = (int64_t)1 << 16;  // elements; larger layouts are only validated

struct Axis {
    int64_t stride;
    int64_t extent;
};

// [lo, hi] of the element offsets sum(i * stride), 0 <= i < extent; false when empty or
// beyond kMaxSpan.
bool span_of(const Axis *ax, int n, int64_t *lo, int64_t *hi) {
    __int128 l = 0, h = 0;
    for (int i = 0; i < n; ++i) {
        if (ax[i].extent <= 0) return false;
        const __int128 e = (__int128)ax[i].stride * (ax[i].extent - 1);
        if (e < 0) l += e;
        else h += e;
    }
    if (h - l >= kMaxSpan) return false;
    *lo = (int64_t)l;
    *hi = (int64_t)h;
    return true;
}

int64_t draw_stride(Reader &r, int64_t natural) {
    switch (r.u8() % 8) {
    case 0: return natural;
    case 1: return natural + r.range(0, 3);
    case 2: return -natural;
    case 3: return (int16_t)r.u16();
    case 4: return 0;
    case 5: return r.pick<int64_t>({INT64_MAX / 3, INT64_MIN / 5, (int64_t)1 << 40, 1});
    default: return natural;
    }
}

// A layout for [H][T][D] (strided or paged) and the offsets it may touch.
struct Described {
    nq_layout l{};
    std::vector<int32_t> table;
    bool bounded = false;
    int64_t lo = 0, hi = 0;
};

void draw_layout(Reader &r, uint32_t H, uint32_t T, uint32_t D, Described &out) {
    nq_layout &l = out.l;
    std::memset(&l, 0, sizeof l);
    const uint8_t kind = r.u8() % 16;
    l.kind = kind < 8 ? NQ_LAYOUT_STRIDED : kind < 15 ? NQ_LAYOUT_PAGED : (nq_layout_kind)r.pick<int>({0, 3, -1, 77});
    l.stride_dim = r.pick<int64_t>({0, 0, 1, 1, 2, -1});
    const int64_t sd = l.stride_dim ? l.stride_dim : 1;
    const int64_t row = (int64_t)D * (sd < 0 ? -sd : sd);
    if (l.kind == NQ_LAYOUT_PAGED) {
        l.page_size = r.pick<uint32_t>({1, 2, 4, 8, 16, 5, 0});
        const uint32_t ps = l.page_size ? l.page_size : 1;
        const uint32_t need = (T + ps - 1) / ps;
        l.num_pages = need + r.range(0, 3) - (need && r.u8() % 16 == 0 ? 1 : 0);
        if (r.u8() % 32 == 0) l.num_pages = r.pick<uint32_t>({0, 0x7fffffffu, 0xffffffffu});
        const bool nhd = r.flag();
        l.stride_token = draw_stride(r, nhd ? (int64_t)H * row : row);
        l.stride_head = draw_stride(r, nhd ? row : (int64_t)ps * row);
        l.stride_page = draw_stride(r, (int64_t)ps * H * row);
        out.table.resize(need + 1);
        for (uint32_t i = 0; i < need; ++i) {
            const uint8_t c = r.u8();
            out.table[i] = c % 32 == 0 ? -1 : c % 32 == 1 ? (int32_t)l.num_pages : (int32_t)(c % (l.num_pages ? l.num_pages : 1));
        }
        if (r.u8() % 8 != 0) {  // mostly a permutation, so that more layouts pass
            for (uint32_t i = 0; i < need; ++i) out.table[i] = (int32_t)((i * 7 + 3) % (need ? need : 1));
            if (l.num_pages < need) out.table[0] = (int32_t)need;
        }
        l.page_table = r.u8() % 32 == 0 ? nullptr : out.table.data();
        Axis ax[4] = {{l.stride_page, l.num_pages}, {l.stride_token, ps}, {l.stride_head, H}, {sd, D}};
        out.bounded = span_of(ax, 4, &out.lo, &out.hi);
    } else {
        const bool token_major = r.flag();
        l.stride_head = draw_stride(r, token_major ? row : (int64_t)T * row);
        l.stride_token = draw_stride(r, token_major ? (int64_t)H * row : row);
        Axis ax[3] = {{l.stride_head, H}, {l.stride_token, T}, {sd, D}};
        out.bounded = span_of(ax, 3, &out.lo, &out.hi);
    }
}

// A buffer holding exactly the elements [lo, hi] of a described layout; base() is the
// pointer the descriptor gets (element 0, possibly outside the buffer).
struct Buffer {
    std::vector<uint8_t> bytes;
    int64_t lo = 0;
    uint32_t eb = 2;
    size_t misalign = 0;
    void *base() { return bytes.data() + misalign - lo * (int64_t)eb; }
};

void fill(Buffer &b, const Described &d, uint32_t eb, nq_dtype dt, bool misalign, ValueSource &vs) {
    b.eb = eb ? eb : 2;
    b.lo = d.lo;
    b.misalign = misalign ? 1 : 0;
    const int64_t n = d.hi - d.lo + 1;
    b.bytes.assign((size_t)n * b.eb + b.misalign, 0);
    if (dtype_size(dt))
        for (int64_t i = 0; i < n; ++i) store(b.bytes.data() + b.misalign, dt, i, vs.next());
}

// Copies the logical [H][T][D] tensor of a layout into contiguous memory.
std::vector<uint8_t> gather(const void *base, const nq_layout &l, uint32_t eb, uint32_t H, uint32_t T, uint32_t D) {
    std::vector<uint8_t> out((size_t)H * T * D * eb);
    if (out.empty()) return out;
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < T; ++t)
            for (uint32_t d = 0; d < D; ++d)
                std::memcpy(&out[(((size_t)h * T + t) * D + d) * eb],
                            static_cast<const uint8_t *>(base) + layout_offset(l, h, t, d) * (int64_t)eb, eb);
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Reader r(data, size);
    ValueSource vs(data, size);

    nq_config cfg;
    nq_config_init(&cfg);
    cfg.head_dim = r.pick<uint32_t>({8, 16, 24, 64, 32, 8, 0, 12, 520});
    cfg.num_kv_heads = r.pick<uint32_t>({1, 2, 3, 4, 1, 2, 0});
    cfg.num_q_heads = cfg.num_kv_heads * r.range(1, 2);
    cfg.preset = r.pick<nq_preset>({NQ_PRESET_LOSSLESS, NQ_PRESET_BALANCED, NQ_PRESET_MAX});
    cfg.evict_mode = (nq_evict_mode)r.range(1, 3);
    cfg.evict_page_size = r.pick<uint32_t>({0, 4, 16});
    cfg.rope.mode = (nq_rope_mode)r.range(0, 2);
    nq_context *ctx = nullptr;
    if (checked(nq_context_create(&cfg, &ctx)) != NQ_OK) return 0;
    const uint32_t H = cfg.num_kv_heads, D = cfg.head_dim, QH = cfg.num_q_heads ? cfg.num_q_heads : H;

    nq_kv_desc kv;
    nq_kv_desc_init(&kv);
    kv.dtype = r.pick<nq_dtype>({NQ_DTYPE_F16, NQ_DTYPE_BF16, NQ_DTYPE_F32, NQ_DTYPE_F16, (nq_dtype)0, (nq_dtype)4});
    kv.memory = r.u8() % 16 ? NQ_MEMORY_HOST : r.pick<nq_memory>({NQ_MEMORY_CUDA, NQ_MEMORY_HIP, (nq_memory)7});
    kv.num_tokens = r.range(0, 48);
    kv.layer = r.range(0, 2);
    kv.rope_seq_len = r.flag() ? r.range(0, 100) : 0;
    const uint32_t T = kv.num_tokens;
    std::vector<int64_t> positions(T + 1);
    if (r.flag()) {
        int64_t p = r.pick<int64_t>({0, 3, -2, 4294967290LL});
        for (uint32_t i = 0; i < T; ++i) {
            positions[i] = p;
            p += r.u8() % 64 == 0 ? -1 : 1 + (r.u8() & 3);
        }
        kv.positions = positions.data();
    } else {
        kv.start_position = r.pick<int64_t>({0, 5, 100000, -1, 4294967290LL, 4294967296LL});
    }
    const uint32_t eb = dtype_size(kv.dtype);
    Described kd, vd;
    draw_layout(r, H, T, D, kd);
    draw_layout(r, H, T, D, vd);
    kv.k_layout = kd.l;
    kv.v_layout = vd.l;
    const bool misalign = r.u8() % 32 == 0;

    // Scores: engine-given [H][T] or queries [QH][NQ][D], strided from the input.
    nq_score_desc sc;
    nq_score_desc_init(&sc);
    const uint8_t score_kind = r.u8() % 4;
    Buffer sbuf;
    Described sd_desc;
    uint32_t NQ = 0;
    bool scores_bounded = true;
    if (score_kind == 1) {
        sc.kind = NQ_SCORES_GIVEN;
        const bool token_major = r.flag();
        sc.score_stride_head = draw_stride(r, token_major ? 1 : (int64_t)T);
        sc.score_stride_token = draw_stride(r, token_major ? (int64_t)H : 1);
        Axis ax[2] = {{sc.score_stride_head, H}, {sc.score_stride_token, T}};
        scores_bounded = T == 0 || span_of(ax, 2, &sd_desc.lo, &sd_desc.hi);
        if (scores_bounded && T) {
            fill(sbuf, sd_desc, 4, NQ_DTYPE_F32, false, vs);
            sc.scores = static_cast<const float *>(sbuf.base());
        }
    } else if (score_kind == 2) {
        sc.kind = NQ_SCORES_QUERIES;
        sc.query_dtype = r.pick<nq_dtype>({NQ_DTYPE_F16, NQ_DTYPE_F32, NQ_DTYPE_BF16, (nq_dtype)9});
        NQ = r.range(0, 6);
        sc.num_queries = NQ;
        sc.pool_kernel = r.pick<uint32_t>({0, 1, 3, 7, 2});
        sc.q_stride_dim = r.pick<int64_t>({0, 1, 2});
        const int64_t qd = sc.q_stride_dim ? sc.q_stride_dim : 1;
        sc.q_stride_head = draw_stride(r, (int64_t)NQ * D * qd);
        sc.q_stride_token = draw_stride(r, (int64_t)D * qd);
        Axis ax[3] = {{sc.q_stride_head, QH}, {sc.q_stride_token, NQ}, {qd, D}};
        scores_bounded = NQ == 0 || span_of(ax, 3, &sd_desc.lo, &sd_desc.hi);
        if (scores_bounded && NQ) {
            fill(sbuf, sd_desc, dtype_size(sc.query_dtype), sc.query_dtype, false, vs);
            sc.queries = sbuf.base();
        }
    } else if (score_kind == 3) {
        sc.kind = (nq_score_kind)r.pick<int>({3, -1});
    }

    // Validation alone, with pointers that are never read.
    alignas(16) static uint8_t dummy[64];
    nq_kv_desc probe = kv;
    probe.k = probe.v = dummy;
    size_t bound = 0;
    const nq_status bst = checked(nq_compress_bound(ctx, &probe, &bound));

    if (!kd.bounded || !vd.bounded || !scores_bounded || T == 0 || !eb || kv.memory != NQ_MEMORY_HOST) {
        nq_context_free(ctx);
        return 0;
    }
    Buffer kbuf, vbuf;
    fill(kbuf, kd, eb, kv.dtype, misalign, vs);
    fill(vbuf, vd, eb, kv.dtype, false, vs);
    kv.k = kbuf.base();
    kv.v = vbuf.base();
    nq_block *b = nullptr;
    const nq_status st = checked(nq_compress_kv(ctx, &kv, score_kind ? &sc : nullptr, nullptr, &b));
    if (st != NQ_OK) {
        FUZZ_CHECK(b == nullptr);
        nq_context_free(ctx);
        return 0;
    }
    FUZZ_CHECK(bst == NQ_OK);
    const BlockSummary s = describe(b);
    FUZZ_CHECK(s.info.resident_bytes <= bound);  // presets plan the largest bit pair they may choose

    // The same logical tensors, contiguous, give the same block.
    std::vector<uint8_t> ck = gather(kv.k, kv.k_layout, eb, H, T, D), cv = gather(kv.v, kv.v_layout, eb, H, T, D);
    nq_kv_desc plain = kv;
    plain.k = ck.data();
    plain.v = cv.data();
    nq_layout_contiguous(&plain.k_layout, T, D);
    nq_layout_contiguous(&plain.v_layout, T, D);
    nq_score_desc plain_sc = sc;
    std::vector<uint8_t> cs;
    if (sc.kind == NQ_SCORES_GIVEN) {
        nq_layout sl{};
        sl.kind = NQ_LAYOUT_STRIDED;
        sl.stride_head = sc.score_stride_head;
        sl.stride_token = sc.score_stride_token;
        sl.stride_dim = 1;
        cs = gather(sc.scores, sl, 4, H, T, 1);
        plain_sc.scores = reinterpret_cast<const float *>(cs.data());
        plain_sc.score_stride_head = T;
        plain_sc.score_stride_token = 1;
    } else if (sc.kind == NQ_SCORES_QUERIES) {
        nq_layout ql{};
        ql.kind = NQ_LAYOUT_STRIDED;
        ql.stride_head = sc.q_stride_head;
        ql.stride_token = sc.q_stride_token;
        ql.stride_dim = sc.q_stride_dim;
        cs = gather(sc.queries, ql, dtype_size(sc.query_dtype), QH, NQ, D);
        plain_sc.queries = cs.data();
        plain_sc.q_stride_head = (int64_t)NQ * D;
        plain_sc.q_stride_token = D;
        plain_sc.q_stride_dim = 1;
    }
    if (std::getenv("NQ_FUZZ_VERBOSE")) {  // for triage: what the input described
        std::fprintf(stderr, "config: head_dim %u heads %u q_heads %u preset %d evict_mode %d rope %d\n", D, H, QH,
                     (int)cfg.preset, (int)cfg.evict_mode, (int)cfg.rope.mode);
        std::fprintf(stderr, "kv: dtype %d tokens %u positions %s start %lld rope_seq_len %u\n", (int)kv.dtype, T,
                     kv.positions ? "given" : "none", (long long)kv.start_position, kv.rope_seq_len);
        for (const nq_layout *l : {&kv.k_layout, &kv.v_layout})
            std::fprintf(stderr, "layout: kind %d page_size %u head %lld token %lld dim %lld page %lld pages %u\n",
                         (int)l->kind, l->page_size, (long long)l->stride_head, (long long)l->stride_token,
                         (long long)l->stride_dim, (long long)l->stride_page, l->num_pages);
        std::fprintf(stderr, "scores: kind %d strides %lld %lld queries %u dtype %d q strides %lld %lld %lld pool %u\n",
                     (int)sc.kind, (long long)sc.score_stride_head, (long long)sc.score_stride_token, sc.num_queries,
                     (int)sc.query_dtype, (long long)sc.q_stride_head, (long long)sc.q_stride_token,
                     (long long)sc.q_stride_dim, sc.pool_kernel);
    }
    // Paged eviction without evict_page_size takes the page size of a paged input (16
    // for a strided one): then the two blocks may legitimately keep different tokens.
    const bool same_pages = cfg.evict_mode != NQ_EVICT_PAGED || cfg.evict_page_size != 0 ||
                            kv.k_layout.kind != NQ_LAYOUT_PAGED || kv.k_layout.page_size == 16;
    nq_block *pb = nullptr;
    FUZZ_CHECK(nq_compress_kv(ctx, &plain, score_kind ? &plain_sc : nullptr, nullptr, &pb) == NQ_OK);
    if (same_pages) FUZZ_CHECK(describe(pb).digest == s.digest);
    nq_block_free(pb);

    // Decode into a fuzzed output layout: the same values as a contiguous decode.
    const uint32_t K = s.info.tokens_kept;
    nq_kv_desc out;
    nq_kv_desc_init(&out);
    out.dtype = r.pick<nq_dtype>({NQ_DTYPE_F32, NQ_DTYPE_F16, NQ_DTYPE_BF16});
    out.num_tokens = K;
    const uint32_t oeb = dtype_size(out.dtype);
    Described ok_, ov_;
    draw_layout(r, H, K, D, ok_);
    draw_layout(r, H, K, D, ov_);
    out.k_layout = ok_.l;
    out.v_layout = ov_.l;
    if (ok_.bounded && ov_.bounded) {
        Buffer okb, ovb;
        ValueSource junk(data, 0);
        fill(okb, ok_, oeb, (nq_dtype)0 /* zeros */, false, junk);
        fill(ovb, ov_, oeb, (nq_dtype)0, false, junk);
        out.k = okb.base();
        out.v = ovb.base();
        if (checked(nq_decode(ctx, b, 0, K, &out, nullptr)) == NQ_OK) {
            nq_status dst;
            const std::vector<uint8_t> want = decode_contiguous(ctx, b, s.info, 0, K, out.dtype, &dst);
            FUZZ_CHECK(dst == NQ_OK);
            std::vector<uint8_t> got = gather(out.k, out.k_layout, oeb, H, K, D);
            const std::vector<uint8_t> gv = gather(out.v, out.v_layout, oeb, H, K, D);
            got.insert(got.end(), gv.begin(), gv.end());
            FUZZ_CHECK(got == want);
        }
    }
    nq_block_free(b);
    nq_context_free(ctx);
    return 0;
}
