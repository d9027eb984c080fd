// What the API tests share: RAII handles, K/V tensors in an engine's memory under any
// layout (strided with any signed strides, paged NHD/HND with shuffled page tables),
// written and read through the test's own index arithmetic and float64 conversions,
// and helpers to compress and decode.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "nexusquant.h"
#include "nq_test.h"

namespace nqt {

struct CtxFree {
    void operator()(nq_context *c) const { nq_context_free(c); }
};
struct BlockFree {
    void operator()(nq_block *b) const { nq_block_free(b); }
};
struct SeqFree {
    void operator()(nq_sequence *s) const { nq_sequence_free(s); }
};
using Ctx = std::unique_ptr<nq_context, CtxFree>;
using Block = std::unique_ptr<nq_block, BlockFree>;
using Seq = std::unique_ptr<nq_sequence, SeqFree>;

// Quantisation only, no RoPE, no fp16 tokens: the plainest configuration.
inline nq_config plain_config(uint32_t heads, uint32_t head_dim, uint32_t k_bits = 3, uint32_t v_bits = 2) {
    nq_config c;
    nq_config_init(&c);
    c.num_kv_heads = heads;
    c.head_dim = head_dim;
    c.preset = NQ_PRESET_CUSTOM;
    c.k_bits = k_bits;
    c.v_bits = v_bits;
    c.evict_fraction = 0.0f;
    c.fp16_sinks = 0;
    c.fp16_window = 0;
    c.sink_tokens = 0;
    c.recent_window = 0;
    c.rope.mode = NQ_ROPE_NONE;
    return c;
}

inline Ctx make_ctx(const nq_config &c) {
    nq_context *p = nullptr;
    nq_status st = nq_context_create(&c, &p);
    EXPECT_EQ(st, NQ_OK) << nq_last_error();
    return Ctx(p);
}

enum class Layout { HTD, THD, DimStrided, Reversed, PagedNHD, PagedHND };
inline const char *layout_name(Layout l) {
    switch (l) {
        case Layout::HTD:
            return "HTD";
        case Layout::THD:
            return "THD";
        case Layout::DimStrided:
            return "DimStrided";
        case Layout::Reversed:
            return "Reversed";
        case Layout::PagedNHD:
            return "PagedNHD";
        case Layout::PagedHND:
            return "PagedHND";
    }
    return "?";
}
const Layout kAllLayouts[] = {Layout::HTD,      Layout::THD,      Layout::DimStrided,
                              Layout::Reversed, Layout::PagedNHD, Layout::PagedHND};

inline uint32_t dtype_size(nq_dtype t) { return t == NQ_DTYPE_F32 ? 4 : 2; }
inline const char *dtype_label(nq_dtype t) { return t == NQ_DTYPE_F16 ? "f16" : (t == NQ_DTYPE_BF16 ? "bf16" : "f32"); }

// Rounds a value as storing it in the dtype does.
inline double round_to(nq_dtype t, double x) {
    switch (t) {
        case NQ_DTYPE_F16:
            return ref_round_f16(x);
        case NQ_DTYPE_BF16:
            return ref_round_bf16(x);
        default:
            return ref_round_f32(x);
    }
}

// One of K or V (or the queries) in engine memory.
class Tensor {
public:
    Tensor(nq_dtype dtype, Layout kind, uint32_t heads, uint32_t tokens, uint32_t dim, uint32_t page_size = 16)
        : dtype_(dtype), kind_(kind), H_(heads), T_(tokens), D_(dim), es_(dtype_size(dtype)) {
        std::memset(&layout_, 0, sizeof layout_);
        layout_.kind = NQ_LAYOUT_STRIDED;
        const int64_t H = heads, T = tokens, D = dim;
        switch (kind) {
            case Layout::HTD:
                set_strides(T * D, D, 1);
                break;
            case Layout::THD:
                set_strides(D, H * D, 1);
                break;
            case Layout::DimStrided:  // every other element, gaps between tokens and heads
                set_strides(T * (2 * D + 6) + 10, 2 * D + 6, 2);
                break;
            case Layout::Reversed:  // every stride negative
                set_strides(-T * D, -D, -1);
                break;
            case Layout::PagedNHD:
            case Layout::PagedHND: {
                const uint32_t P = page_size, pages = (tokens + P - 1) / P;
                layout_.kind = NQ_LAYOUT_PAGED;
                layout_.page_size = P;
                layout_.num_pages = pages + 3;  // spare pages the table does not use
                if (kind == Layout::PagedNHD) {
                    layout_.stride_token = H * D;
                    layout_.stride_head = D;
                } else {
                    layout_.stride_head = (int64_t)P * D;
                    layout_.stride_token = D;
                }
                layout_.stride_dim = 1;
                layout_.stride_page = (int64_t)P * H * D + 8;
                std::vector<int32_t> perm(layout_.num_pages);
                std::iota(perm.begin(), perm.end(), 0);
                std::shuffle(perm.begin(), perm.end(), rng());
                page_table_.assign(perm.begin(), perm.begin() + pages);
                layout_.page_table = page_table_.data();
                break;
            }
        }
        // The span of every element any (head, token, dim) of the layout can reach.
        int64_t lo = 0, hi = 0;
        auto extend = [&](int64_t stride, int64_t n) {
            if (n <= 1) return;
            if (stride > 0)
                hi += stride * (n - 1);
            else
                lo += stride * (n - 1);
        };
        extend(layout_.stride_head, H);
        extend(layout_.stride_dim ? layout_.stride_dim : 1, D);
        if (layout_.kind == NQ_LAYOUT_PAGED) {
            extend(layout_.stride_token, page_size);
            extend(layout_.stride_page, layout_.num_pages);
        } else {
            extend(layout_.stride_token, T);
        }
        const int64_t pad = 8;
        base_ = pad - lo;
        buf_.assign((size_t)(hi - lo + 1 + 2 * pad) * es_, 0xA5);
    }

    Tensor(const Tensor &) = delete;
    Tensor &operator=(const Tensor &) = delete;

    nq_dtype dtype() const { return dtype_; }
    Layout kind() const { return kind_; }
    uint32_t tokens() const { return T_; }
    const nq_layout &layout() const { return layout_; }
    void *base() { return buf_.data() + base_ * es_; }

    // Element index (from the base) of (h, t, d), from nq_layout's documented formula.
    int64_t offset(uint32_t h, uint32_t t, uint32_t d) const {
        const int64_t sd = layout_.stride_dim ? layout_.stride_dim : 1;
        if (layout_.kind == NQ_LAYOUT_PAGED)
            return (int64_t)page_table_[t / layout_.page_size] * layout_.stride_page +
                   (int64_t)(t % layout_.page_size) * layout_.stride_token + (int64_t)h * layout_.stride_head + d * sd;
        return (int64_t)h * layout_.stride_head + (int64_t)t * layout_.stride_token + d * sd;
    }

    // Stores x rounded to the dtype; returns the stored value.
    double set(uint32_t h, uint32_t t, uint32_t d, double x) {
        const double r = round_to(dtype_, x);
        uint8_t *p = buf_.data() + (base_ + offset(h, t, d)) * es_;
        if (dtype_ == NQ_DTYPE_F32) {
            float f = (float)r;
            std::memcpy(p, &f, 4);
        } else {
            uint16_t b = dtype_ == NQ_DTYPE_F16 ? ref_f16_bits(r) : ref_bf16_bits(r);
            std::memcpy(p, &b, 2);
        }
        return r;
    }

    double get(uint32_t h, uint32_t t, uint32_t d) const {
        const uint8_t *p = buf_.data() + (base_ + offset(h, t, d)) * es_;
        if (dtype_ == NQ_DTYPE_F32) {
            float f;
            std::memcpy(&f, p, 4);
            return f;
        }
        uint16_t b;
        std::memcpy(&b, p, 2);
        return dtype_ == NQ_DTYPE_F16 ? ref_f16_value(b) : ref_bf16_value(b);
    }

    // True if no byte outside the elements of heads x tokens x dims changed from the
    // fill pattern (decode must not write anywhere else).
    bool only_addressed_written() const {
        std::vector<uint8_t> mine(buf_.size(), 0);
        for (uint32_t h = 0; h < H_; ++h)
            for (uint32_t t = 0; t < T_; ++t)
                for (uint32_t d = 0; d < D_; ++d)
                    for (uint32_t b = 0; b < es_; ++b) mine[(size_t)((base_ + offset(h, t, d)) * es_ + b)] = 1;
        for (size_t i = 0; i < buf_.size(); ++i)
            if (!mine[i] && buf_[i] != 0xA5) return false;
        return true;
    }

private:
    void set_strides(int64_t head, int64_t token, int64_t dim) {
        layout_.stride_head = head;
        layout_.stride_token = token;
        layout_.stride_dim = dim;
    }

    nq_dtype dtype_;
    Layout kind_;
    uint32_t H_, T_, D_, es_;
    nq_layout layout_;
    std::vector<int32_t> page_table_;
    std::vector<uint8_t> buf_;
    int64_t base_ = 0;
};

// Ground truth of one K or V: [heads][tokens][dim] float64.
struct Values {
    uint32_t H = 0, T = 0, D = 0;
    std::vector<double> x;
    double &at(uint32_t h, uint32_t t, uint32_t d) { return x[((size_t)h * T + t) * D + d]; }
    double at(uint32_t h, uint32_t t, uint32_t d) const { return x[((size_t)h * T + t) * D + d]; }
};

enum class Dist { Gauss, Laplace, Student3, KeysWithOutliers };

inline double draw(Dist dist) {
    switch (dist) {
        case Dist::Laplace:
            return laplace();
        case Dist::Student3:
            return student3();
        default:
            return gauss();
    }
}

inline Values random_values(uint32_t H, uint32_t T, uint32_t D, Dist dist = Dist::Gauss, double scale = 1.0) {
    Values v;
    v.H = H;
    v.T = T;
    v.D = D;
    v.x.resize((size_t)H * T * D);
    std::vector<double> channel(D, 1.0);
    if (dist == Dist::KeysWithOutliers)  // a few large channels, as keys have
        for (int i = 0; i < 4; ++i) channel[below(D)] = uniform(5, 20);
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < T; ++t)
            for (uint32_t d = 0; d < D; ++d) v.at(h, t, d) = draw(dist) * channel[d] * scale;
    return v;
}

// Writes v into the tensor; v takes the stored (rounded) values.
inline void store(Tensor &t, Values &v) {
    for (uint32_t h = 0; h < v.H; ++h)
        for (uint32_t i = 0; i < v.T; ++i)
            for (uint32_t d = 0; d < v.D; ++d) v.at(h, i, d) = t.set(h, i, d, v.at(h, i, d));
}

inline Values load(const Tensor &t, uint32_t H, uint32_t D) {
    Values v;
    v.H = H;
    v.T = t.tokens();
    v.D = D;
    v.x.resize((size_t)H * v.T * D);
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t i = 0; i < v.T; ++i)
            for (uint32_t d = 0; d < D; ++d) v.at(h, i, d) = t.get(h, i, d);
    return v;
}

inline nq_kv_desc kv_desc(Tensor &k, Tensor &v, uint32_t tokens) {
    nq_kv_desc kv;
    nq_kv_desc_init(&kv);
    kv.dtype = k.dtype();
    kv.num_tokens = tokens;
    kv.k = k.base();
    kv.v = v.base();
    kv.k_layout = k.layout();
    kv.v_layout = v.layout();
    return kv;
}

inline Block compress(nq_context *ctx, const nq_kv_desc &kv, const nq_score_desc *sc = nullptr) {
    nq_block *b = nullptr;
    nq_status st = nq_compress_kv(ctx, &kv, sc, nullptr, &b);
    EXPECT_EQ(st, NQ_OK) << nq_last_error();
    return Block(b);
}

// A block of random fp16 K/V in [heads][tokens][dim] layout, for tests about blocks
// rather than about their values.
inline Block compress_random(nq_context *ctx, uint32_t H, uint32_t T, uint32_t D) {
    Tensor k(NQ_DTYPE_F16, Layout::HTD, H, T, D), v(NQ_DTYPE_F16, Layout::HTD, H, T, D);
    Values K = random_values(H, T, D), V = random_values(H, T, D);
    store(k, K);
    store(v, V);
    return compress(ctx, kv_desc(k, v, T));
}

inline nq_block_info info_of(const nq_block *b) {
    nq_block_info i;
    std::memset(&i, 0, sizeof i);
    i.size = sizeof i;
    EXPECT_EQ(nq_block_get_info(b, &i), NQ_OK) << nq_last_error();
    return i;
}

inline uint64_t digest_of(const nq_block *b) {
    uint64_t d = 0;
    EXPECT_EQ(nq_block_digest(b, &d), NQ_OK) << nq_last_error();
    return d;
}

inline std::vector<int64_t> positions_of(const nq_block *b, uint32_t head) {
    nq_block_info i = info_of(b);
    std::vector<int64_t> p(i.tokens_kept);
    EXPECT_EQ(nq_block_positions(b, head, 0, i.tokens_kept, p.data()), NQ_OK) << nq_last_error();
    return p;
}

// Decodes tokens [begin, end) into fresh contiguous f32 tensors.
struct Decoded {
    Values k, v;
};
inline Decoded decode_f32(nq_context *ctx, const nq_block *b, uint32_t heads, uint32_t dim, uint32_t begin,
                          uint32_t end) {
    Tensor k(NQ_DTYPE_F32, Layout::HTD, heads, end - begin, dim), v(NQ_DTYPE_F32, Layout::HTD, heads, end - begin, dim);
    nq_kv_desc out = kv_desc(k, v, end - begin);
    EXPECT_EQ(nq_decode_block(ctx, b, begin, end, &out, nullptr), NQ_OK) << nq_last_error();
    return Decoded{load(k, heads, dim), load(v, heads, dim)};
}

inline Decoded decode_all(nq_context *ctx, const nq_block *b) {
    nq_block_info i = info_of(b);
    return decode_f32(ctx, b, i.num_heads, i.head_dim, 0, i.tokens_kept);
}

// SNR of decoded rows against the originals they claim to hold: row j of head h is
// the input token at index pos_to_index(positions[h][j]); rows [skip_lo, kept -
// skip_hi) only.
template <class F>
double snr_rows(const Values &orig, const Values &dec, const std::vector<std::vector<int64_t>> &pos, F pos_to_index,
                uint32_t skip_lo = 0, uint32_t skip_hi = 0) {
    double s = 0, n = 0;
    for (uint32_t h = 0; h < dec.H; ++h)
        for (uint32_t j = skip_lo; j + skip_hi < dec.T; ++j) {
            const uint32_t t = pos_to_index(pos[h][j]);
            for (uint32_t d = 0; d < dec.D; ++d) {
                const double a = orig.at(h, t, d), e = a - dec.at(h, j, d);
                s += a * a;
                n += e * e;
            }
        }
    return n == 0 ? INFINITY : 10 * std::log10(s / n);
}

// Expected SNR (dB) of the E8 codec on Gaussian data per bit budget (docs/DESIGN.md),
// less a margin for sampling and the dtype's rounding.
inline double e8_snr_floor(uint32_t bits) {
    static const double t[9] = {0, 4.69, 9.97, 15.06, 20.16, 25.2, 30.2, 35.2, 40.2};
    return t[bits] - 0.6;
}

}  // namespace nqt

#include <map>
#include <mutex>

namespace nqt {

// An nq_allocator that counts, checks and can be told to fail: allocation number
// `fail_at` (0-based, counted from the last reset) and all later ones return NULL
// when `fail_all_after` is set, else only that one.
struct CountingAllocator {
    std::mutex m;
    std::map<void *, size_t> live;
    long allocs = 0, frees = 0, bad_frees = 0, bad_requests = 0;
    long fail_at = -1;
    bool fail_all_after = false;

    static void *alloc_cb(void *user, size_t bytes, size_t align, nq_memory mem, int32_t) {
        auto *a = static_cast<CountingAllocator *>(user);
        std::lock_guard<std::mutex> g(a->m);
        const long n = a->allocs++;
        if (mem != NQ_MEMORY_HOST || align == 0 || (align & (align - 1)) || align > 4096) ++a->bad_requests;
        if (a->fail_at >= 0 && (n == a->fail_at || (a->fail_all_after && n > a->fail_at))) return nullptr;
        if (align < sizeof(void *)) align = sizeof(void *);
        void *p = nullptr;
        if (posix_memalign(&p, align, bytes ? bytes : 1) != 0) return nullptr;
        a->live[p] = bytes;
        return p;
    }
    static void free_cb(void *user, void *p, nq_memory, int32_t) {
        auto *a = static_cast<CountingAllocator *>(user);
        std::lock_guard<std::mutex> g(a->m);
        ++a->frees;
        auto it = a->live.find(p);
        if (it == a->live.end()) {
            ++a->bad_frees;
            return;
        }
        a->live.erase(it);
        std::free(p);
    }
    nq_allocator get() {
        nq_allocator x;
        x.alloc = alloc_cb;
        x.free = free_cb;
        x.user = this;
        return x;
    }
    size_t live_count() {
        std::lock_guard<std::mutex> g(m);
        return live.size();
    }
    long alloc_count() {
        std::lock_guard<std::mutex> g(m);
        return allocs;
    }
};

}  // namespace nqt
