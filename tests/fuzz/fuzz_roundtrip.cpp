// Parameters and data from the input -> compress -> serialise -> deserialise -> decode.
// Checks: compressing twice gives the same digest (and nq_compress_batch the same
// bytes again); the size nq_compress_bound promised; the archive restores the same
// block; decoding the restored block equals decoding the original; range decodes equal
// the rows of a whole decode; decoded values are finite; a sequence built from two
// chunks holds all their tokens.
#include "fuzz_util.h"

using namespace nqfuzz;

namespace {

nq_config draw_config(Reader &r, nq_layer_override *ov) {
    nq_config c;
    nq_config_init(&c);
    c.head_dim = 8 * r.range(1, 8);
    c.num_kv_heads = r.range(1, 3);
    c.num_q_heads = c.num_kv_heads * r.range(1, 2);
    c.preset = (nq_preset)r.range(0, 8);
    if (c.preset == NQ_PRESET_CUSTOM) {
        c.k_bits = r.range(1, 8);
        c.v_bits = r.range(1, 8);
        c.evict_fraction = (float)r.range(0, 95) / 100.0f;
    }
    if ((r.u8() & 7) == 0) c.target_ratio = (float)r.range(20, 400) / 10.0f;
    c.codec = r.flag() ? NQ_CODEC_SCALAR : NQ_CODEC_E8;
    c.evict_mode = (nq_evict_mode)r.range(1, 3);
    c.evict_page_size = r.pick<uint32_t>({0, 1, 4, 16, 7});
    c.sink_tokens = (int32_t)r.range(0, 9) - 1;
    c.recent_window = (int32_t)r.range(0, 40) - 1;
    c.fp16_sinks = (int32_t)r.range(0, 5) - 1;
    c.fp16_window = (int32_t)r.range(0, 17) - 1;
    nq_rope &rope = c.rope;
    rope.mode = (nq_rope_mode)r.range(0, 2);
    rope.pairing = r.flag() ? NQ_ROPE_INTERLEAVED : NQ_ROPE_SPLIT_HALF;
    rope.rotary_dims = r.flag() ? 2 * r.range(1, c.head_dim / 2) : 0;
    rope.theta = r.pick<double>({10000.0, 500000.0, 1000000.0, 1.5});
    rope.scaling = (nq_rope_scaling)r.range(0, 4);
    rope.factor = r.pick<double>({1.0, 2.0, 8.0, 32.0});
    rope.original_max_position = r.pick<uint32_t>({2048, 8192, 64, 1});
    if (rope.scaling == NQ_ROPE_SCALING_YARN && r.flag()) rope.attention_factor = 1.25;
    c.archive_zstd_level = r.pick<int32_t>({0, -1, 1, 3, 9});
    if (r.flag()) {
        ov->layer_begin = r.range(0, 2);
        ov->layer_end = ov->layer_begin + r.range(1, 2);
        ov->k_bits = r.range(0, 8);
        ov->v_bits = r.range(0, 8);
        ov->evict_fraction = (float)r.range(0, 90) / 100.0f - (r.flag() ? 1.0f : 0.0f);
        c.overrides = ov;
        c.num_overrides = 1;
    }
    c.num_threads = r.range(0, 2);
    return c;
}

struct Tensor {
    std::vector<uint8_t> k, v;
    std::vector<int64_t> positions;
    nq_kv_desc kv;
};

// K/V of `tokens` tokens as [heads][tokens][dim], or [tokens][heads][dim].
void make_kv(Reader &r, const nq_config &c, Tensor &t, uint32_t tokens, int64_t first_position, ValueSource &vs) {
    const nq_dtype dt = r.pick<nq_dtype>({NQ_DTYPE_F16, NQ_DTYPE_BF16, NQ_DTYPE_F32});
    const uint32_t H = c.num_kv_heads, D = c.head_dim;
    const size_t n = (size_t)H * tokens * D;
    t.k.assign(n * dtype_size(dt), 0);
    t.v.assign(n * dtype_size(dt), 0);
    nq_kv_desc &kv = t.kv;
    nq_kv_desc_init(&kv);
    kv.dtype = dt;
    kv.num_tokens = tokens;
    kv.layer = r.range(0, 3);
    kv.k = t.k.data();
    kv.v = t.v.data();
    nq_layout_contiguous(&kv.k_layout, tokens, D);
    if (r.flag()) {  // token-major, as most engines store it
        kv.k_layout.stride_token = (int64_t)H * D;
        kv.k_layout.stride_head = D;
    }
    kv.v_layout = kv.k_layout;
    for (size_t i = 0; i < n; ++i) {
        store(t.k.data(), dt, (int64_t)i, vs.next());
        store(t.v.data(), dt, (int64_t)i, vs.next());
    }
    if (r.flag()) {
        t.positions.resize(tokens);
        int64_t p = first_position;
        for (uint32_t i = 0; i < tokens; ++i) {
            t.positions[i] = p;
            p += 1 + (r.u8() % 4 == 0 ? r.range(1, 300) : 0);
        }
        kv.positions = t.positions.data();
    } else {
        kv.start_position = first_position;
    }
    if (c.rope.scaling == NQ_ROPE_SCALING_DYNAMIC_NTK && r.flag()) kv.rope_seq_len = r.range(1, 20000);
}

void check_finite(const std::vector<uint8_t> &f32) {
    for (size_t i = 0; i + 4 <= f32.size(); i += 4) {
        float f;
        std::memcpy(&f, &f32[i], 4);
        FUZZ_CHECK(std::isfinite(f));
    }
}

}  // namespace

// The first kParamBytes bytes choose the parameters, the rest are the K/V values.
constexpr size_t kParamBytes = 96;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Reader r(data, size < kParamBytes ? size : kParamBytes);
    ValueSource vs(data + (size < kParamBytes ? size : kParamBytes), size < kParamBytes ? 0 : size - kParamBytes);
    nq_layer_override ov{};
    const nq_config cfg = draw_config(r, &ov);
    const uint32_t tokens = r.range(1, 72);
    const int64_t start = r.pick<int64_t>({0, 1, 4, 1000, 65530, 4294967295LL - 400});
    const nq_dtype out_dtype = r.pick<nq_dtype>({NQ_DTYPE_F32, NQ_DTYPE_F16, NQ_DTYPE_BF16});
    const uint32_t split = r.range(1, tokens);
    Tensor t;
    make_kv(r, cfg, t, tokens, start, vs);

    nq_context *ctx = nullptr;
    if (checked(nq_context_create(&cfg, &ctx)) != NQ_OK) return 0;

    size_t bound = 0;
    nq_status st = checked(nq_compress_bound(ctx, &t.kv, &bound));
    nq_block *b = nullptr;
    const nq_status cst = checked(nq_compress_kv(ctx, &t.kv, nullptr, nullptr, &b));
    FUZZ_CHECK(cst == st);  // the bound validates what compress validates
    if (cst != NQ_OK) {
        FUZZ_CHECK(b == nullptr);
        nq_context_free(ctx);
        return 0;
    }
    const BlockSummary s = describe(b);
    const nq_block_info &info = s.info;
    FUZZ_CHECK(info.resident_bytes <= bound);  // presets plan the largest bit pair they may choose
    FUZZ_CHECK(info.tokens_in == tokens && info.num_heads == cfg.num_kv_heads && info.head_dim == cfg.head_dim);
    FUZZ_CHECK(info.original_bytes == 4ull * tokens * cfg.num_kv_heads * cfg.head_dim);

    // Determinism: again, and through the batch entry point with a caller workspace.
    nq_block *again = nullptr;
    FUZZ_CHECK(nq_compress_kv(ctx, &t.kv, nullptr, nullptr, &again) == NQ_OK);
    FUZZ_CHECK(describe(again).digest == s.digest);
    nq_block_free(again);
    size_t ws_bytes = 0;
    FUZZ_CHECK(nq_workspace_size(ctx, &t.kv, 1, &ws_bytes) == NQ_OK);
    std::vector<uint8_t> ws(ws_bytes + 64), dst(bound + 16);
    void *ws_aligned = ws.data() + (64 - (uintptr_t)ws.data() % 64) % 64;
    nq_buffer buf{dst.data() + (16 - (uintptr_t)dst.data() % 16) % 16, bound};
    nq_block *batched = nullptr;
    nq_status item = NQ_ERR_INTERNAL;
    FUZZ_CHECK(nq_compress_batch(ctx, &t.kv, nullptr, 1, &buf, ws_aligned, ws_bytes, nullptr, &batched, &item) ==
               NQ_OK);
    FUZZ_CHECK(item == NQ_OK && describe(batched).digest == s.digest);
    nq_block_free(batched);

    // Archive round trip.
    const std::vector<uint8_t> archive = serialize(ctx, b);
    nq_block *back = nullptr;
    FUZZ_CHECK(nq_block_deserialize(ctx, archive.data(), archive.size(), &back) == NQ_OK);
    FUZZ_CHECK(describe(back).digest == s.digest);
    nq_status d1, d2;
    const std::vector<uint8_t> dec = decode_contiguous(ctx, b, info, 0, info.tokens_kept, out_dtype, &d1);
    const std::vector<uint8_t> dec2 = decode_contiguous(ctx, back, info, 0, info.tokens_kept, out_dtype, &d2);
    FUZZ_CHECK(d1 == NQ_OK && d2 == NQ_OK && dec == dec2);
    nq_block_free(back);
    if (out_dtype == NQ_DTYPE_F32) check_finite(dec);

    // A range decodes to the rows of the whole.
    const uint32_t lo = r.range(0, info.tokens_kept), hi = lo + r.range(0, info.tokens_kept - lo);
    const std::vector<uint8_t> part = decode_contiguous(ctx, b, info, lo, hi, out_dtype, &d1);
    FUZZ_CHECK(d1 == NQ_OK);
    const size_t row = (size_t)info.head_dim * dtype_size(out_dtype), n = hi - lo, H = info.num_heads;
    for (size_t kv = 0; kv < 2; ++kv)
        for (size_t h = 0; h < H; ++h)
            FUZZ_CHECK(n == 0 || std::memcmp(dec.data() + ((kv * H + h) * info.tokens_kept + lo) * row,
                                             part.data() + (kv * H + h) * n * row, n * row) == 0);
    nq_block_free(b);

    // Two chunks appended to a sequence: every token of both is there.
    nq_sequence *seq = nullptr;
    FUZZ_CHECK(nq_sequence_create(ctx, t.kv.layer, &seq) == NQ_OK);
    nq_kv_desc first = t.kv, second = t.kv;
    first.num_tokens = split;
    second.num_tokens = tokens - split;
    const size_t eb = dtype_size(t.kv.dtype);
    second.k = t.k.data() + (size_t)split * t.kv.k_layout.stride_token * eb;
    second.v = t.v.data() + (size_t)split * t.kv.v_layout.stride_token * eb;
    if (t.kv.positions) second.positions = t.kv.positions + split;
    else second.start_position = t.kv.start_position + split;
    FUZZ_CHECK(nq_sequence_append(seq, &first, nullptr, nullptr) == NQ_OK);
    if (second.num_tokens) FUZZ_CHECK(checked(nq_sequence_append(seq, &second, nullptr, nullptr)) == NQ_OK);
    uint64_t kept = 0, resident = 0, original = 0;
    FUZZ_CHECK(nq_sequence_totals(seq, &kept, &resident, &original) == NQ_OK);
    FUZZ_CHECK(original == info.original_bytes);
    FUZZ_CHECK(nq_sequence_num_blocks(seq) == (second.num_tokens ? 2u : 1u));
    std::vector<float> sk((size_t)H * kept * info.head_dim), sv(sk.size());
    std::vector<int64_t> pos(kept);
    nq_kv_desc out;
    nq_kv_desc_init(&out);
    out.dtype = NQ_DTYPE_F32;
    out.num_tokens = (uint32_t)kept;
    out.k = sk.data();
    out.v = sv.data();
    nq_layout_contiguous(&out.k_layout, (uint32_t)kept, info.head_dim);
    nq_layout_contiguous(&out.v_layout, (uint32_t)kept, info.head_dim);
    FUZZ_CHECK(nq_sequence_decode(seq, 0, (uint32_t)kept, &out, nullptr) == NQ_OK);
    for (uint32_t h = 0; h < H; ++h) {
        FUZZ_CHECK(nq_sequence_positions(seq, h, 0, (uint32_t)kept, pos.data()) == NQ_OK);
        for (size_t j = 1; j < kept; ++j) FUZZ_CHECK(pos[j] > pos[j - 1]);
    }
    nq_sequence_free(seq);
    nq_context_free(ctx);
    return 0;
}
