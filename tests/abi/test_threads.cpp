// One context used from many threads at once, as the header's "Threads" section allows:
// compress, decode, serialise and deserialise in 8 threads, and decode one shared block
// and one shared sequence from all of them. Every result must equal the single-thread
// one, and each thread must see its own nq_last_error(). Run under ThreadSanitizer by
// .ci/sanitizers.sh; a plain build runs it too.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "nexusquant.h"

namespace {

std::atomic<int> g_failures{0};

#define T_CHECK(cond)                                                                   \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
            ++g_failures;                                                               \
        }                                                                               \
    } while (0)

#define T_OK(expr)                                                                      \
    do {                                                                                \
        nq_status st_ = (expr);                                                         \
        if (st_ != NQ_OK) {                                                             \
            std::fprintf(stderr, "%s:%d: %s: %s (%s)\n", __FILE__, __LINE__, #expr,     \
                         nq_status_string(st_), nq_last_error());                       \
            ++g_failures;                                                               \
        }                                                                               \
    } while (0)

constexpr uint32_t kHeads = 4, kDim = 64;
constexpr int kThreads = 8, kIterations = 4;

struct Input {
    nq_dtype dtype;
    uint32_t tokens;
    int64_t start;
    std::vector<uint8_t> k, v;  // [heads][tokens][dim] of dtype
};

struct Expected {
    uint64_t digest;
    uint32_t kept;
    std::vector<float> k, v;    // decoded as f32
    std::vector<uint8_t> archive;
};

uint64_t lcg(uint64_t &s) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return s >> 33;
}

uint16_t to_f16(float f) {  // round-to-nearest-even for the normal range used here
    uint32_t x;
    std::memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    int32_t e = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t m = x & 0x7fffffu;
    if (e <= 0) return (uint16_t)sign;
    uint32_t h = sign | ((uint32_t)e << 10) | (m >> 13);
    uint32_t rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return (uint16_t)h;
}

Input make_input(uint64_t seed, nq_dtype dtype, uint32_t tokens, int64_t start) {
    Input in{dtype, tokens, start, {}, {}};
    const size_t n = (size_t)kHeads * tokens * kDim;
    const size_t eb = dtype == NQ_DTYPE_F32 ? 4 : 2;
    in.k.resize(n * eb);
    in.v.resize(n * eb);
    uint64_t s = seed;
    for (size_t i = 0; i < n; ++i)
        for (std::vector<uint8_t> *dst : {&in.k, &in.v}) {
            float f = (float)((double)lcg(s) / (double)(1ull << 31) * 4.0 - 2.0);
            if (dst == &in.k && i % kDim == 5) f *= 8.0f;  // an outlier channel in keys
            if (dtype == NQ_DTYPE_F32) {
                std::memcpy(dst->data() + i * 4, &f, 4);
            } else {
                uint16_t h;
                if (dtype == NQ_DTYPE_F16) {
                    h = to_f16(f);
                } else {
                    uint32_t x;
                    std::memcpy(&x, &f, 4);
                    h = (uint16_t)(x >> 16);
                }
                std::memcpy(dst->data() + i * 2, &h, 2);
            }
        }
    return in;
}

nq_kv_desc input_desc(const Input &in) {
    nq_kv_desc kv;
    nq_kv_desc_init(&kv);
    kv.dtype = in.dtype;
    kv.num_tokens = in.tokens;
    kv.start_position = in.start;
    kv.k = const_cast<uint8_t *>(in.k.data());
    kv.v = const_cast<uint8_t *>(in.v.data());
    nq_layout_contiguous(&kv.k_layout, in.tokens, kDim);
    nq_layout_contiguous(&kv.v_layout, in.tokens, kDim);
    return kv;
}

uint32_t kept_of(const nq_block *b) {
    nq_block_info info;
    info.size = sizeof info;
    if (nq_block_get_info(b, &info) != NQ_OK) return 0;
    return info.tokens_kept;
}

// Decodes tokens [begin, end) of a block into f32 [heads][end-begin][dim].
void decode(nq_context *ctx, const nq_block *b, uint32_t begin, uint32_t end, std::vector<float> &k,
            std::vector<float> &v) {
    const uint32_t n = end - begin;
    k.assign((size_t)kHeads * n * kDim + 1, 0.0f);
    v.assign((size_t)kHeads * n * kDim + 1, 0.0f);
    nq_kv_desc out;
    nq_kv_desc_init(&out);
    out.dtype = NQ_DTYPE_F32;
    out.num_tokens = n;
    out.k = k.data();
    out.v = v.data();
    nq_layout_contiguous(&out.k_layout, n, kDim);
    nq_layout_contiguous(&out.v_layout, n, kDim);
    T_OK(nq_decode(ctx, b, begin, end, &out, nullptr));
}

std::vector<uint8_t> serialize(nq_context *ctx, const nq_block *b) {
    size_t bound = 0, written = 0;
    T_OK(nq_block_serialize_bound(b, &bound));
    std::vector<uint8_t> bytes(bound);
    T_OK(nq_block_serialize(ctx, b, bytes.data(), bytes.size(), &written));
    bytes.resize(written);
    return bytes;
}

Expected reference(nq_context *ctx, const Input &in) {
    Expected e{};
    nq_kv_desc kv = input_desc(in);
    nq_block *b = nullptr;
    T_OK(nq_compress_kv(ctx, &kv, nullptr, nullptr, &b));
    if (!b) return e;
    T_OK(nq_block_digest(b, &e.digest));
    e.kept = kept_of(b);
    decode(ctx, b, 0, e.kept, e.k, e.v);
    e.archive = serialize(ctx, b);
    nq_block_free(b);
    return e;
}

// One thread's work: every input in a thread-specific order, several times.
void worker(int id, nq_context *ctx, const std::vector<Input> *inputs, const std::vector<Expected> *want,
            const nq_block *shared, const Expected *shared_want, nq_sequence *seq, const std::vector<float> *seq_k) {
    std::vector<float> k, v;
    const size_t n = inputs->size();
    for (int it = 0; it < kIterations; ++it) {
        for (size_t j = 0; j < n; ++j) {
            const size_t i = (j * 5 + (size_t)id + (size_t)it) % n;
            const Input &in = (*inputs)[i];
            const Expected &e = (*want)[i];
            nq_kv_desc kv = input_desc(in);
            nq_block *b = nullptr;
            T_OK(nq_compress_kv(ctx, &kv, nullptr, nullptr, &b));
            if (!b) continue;
            uint64_t d = 0;
            T_OK(nq_block_digest(b, &d));
            T_CHECK(d == e.digest);
            decode(ctx, b, 0, kept_of(b), k, v);
            T_CHECK(k == e.k && v == e.v);
            std::vector<uint8_t> archive = serialize(ctx, b);
            T_CHECK(archive == e.archive);
            nq_block *back = nullptr;
            T_OK(nq_block_deserialize(ctx, archive.data(), archive.size(), &back));
            uint64_t d2 = 0;
            if (back) T_OK(nq_block_digest(back, &d2));
            T_CHECK(d2 == e.digest);
            nq_block_free(back);
            nq_block_free(b);
        }
        // The shared block, a thread-specific range of it.
        const uint32_t kept = shared_want->kept;
        const uint32_t lo = (uint32_t)(id * 7) % kept, hi = kept;
        decode(ctx, shared, lo, hi, k, v);
        for (uint32_t h = 0; h < kHeads; ++h)
            T_CHECK(std::memcmp(&k[(size_t)h * (hi - lo) * kDim], &shared_want->k[((size_t)h * kept + lo) * kDim],
                                sizeof(float) * (hi - lo) * kDim) == 0);
        // The shared sequence (nobody appends while the threads run).
        uint64_t total = 0;
        T_OK(nq_sequence_totals(seq, &total, nullptr, nullptr));
        std::vector<float> sk((size_t)kHeads * total * kDim), sv(sk.size());
        nq_kv_desc out;
        nq_kv_desc_init(&out);
        out.dtype = NQ_DTYPE_F32;
        out.num_tokens = (uint32_t)total;
        out.k = sk.data();
        out.v = sv.data();
        nq_layout_contiguous(&out.k_layout, (uint32_t)total, kDim);
        nq_layout_contiguous(&out.v_layout, (uint32_t)total, kDim);
        T_OK(nq_sequence_decode(seq, 0, (uint32_t)total, &out, nullptr));
        T_CHECK(sk == *seq_k);
        // This thread's own error message survives other threads' failures.
        const uint32_t bad_end = 100000u + (uint32_t)id;
        out.num_tokens = bad_end;
        T_CHECK(nq_decode(ctx, shared, 0, bad_end, &out, nullptr) == NQ_ERR_OUT_OF_RANGE);
        std::this_thread::yield();
        T_CHECK(std::strstr(nq_last_error(), std::to_string(bad_end).c_str()) != nullptr);
    }
}

// The whole scenario on one context whose own CPU thread pool has `pool_threads`
// threads (0: the library starts none).
int scenario(uint32_t pool_threads) {
    nq_config cfg;
    nq_config_init(&cfg);
    cfg.head_dim = kDim;
    cfg.num_kv_heads = kHeads;
    cfg.preset = NQ_PRESET_BALANCED;  // eviction: scores and token selection run too
    cfg.rope.theta = 500000.0;
    cfg.num_threads = pool_threads;
    nq_context *ctx = nullptr;
    T_OK(nq_context_create(&cfg, &ctx));
    if (!ctx) return 1;

    std::vector<Input> inputs;
    inputs.push_back(make_input(1, NQ_DTYPE_F16, 200, 0));
    inputs.push_back(make_input(2, NQ_DTYPE_F32, 37, 1000));
    inputs.push_back(make_input(3, NQ_DTYPE_BF16, 128, 5));
    inputs.push_back(make_input(4, NQ_DTYPE_F16, 9, 70000));
    inputs.push_back(make_input(5, NQ_DTYPE_F32, 160, 0));
    inputs.push_back(make_input(6, NQ_DTYPE_F16, 64, 64));
    std::vector<Expected> want;
    for (const Input &in : inputs) want.push_back(reference(ctx, in));

    nq_block *shared = nullptr;
    nq_kv_desc kv = input_desc(inputs[0]);
    T_OK(nq_compress_kv(ctx, &kv, nullptr, nullptr, &shared));
    if (!shared) return 1;

    // A sequence: a prefill and two later chunks.
    nq_sequence *seq = nullptr;
    T_OK(nq_sequence_create(ctx, 0, &seq));
    Input pre = make_input(7, NQ_DTYPE_F16, 96, 0), c1 = make_input(8, NQ_DTYPE_F16, 16, 96),
          c2 = make_input(9, NQ_DTYPE_F32, 8, 112);
    for (const Input *in : {&pre, &c1, &c2}) {
        nq_kv_desc d = input_desc(*in);
        T_OK(nq_sequence_append(seq, &d, nullptr, nullptr));
    }
    uint64_t total = 0;
    T_OK(nq_sequence_totals(seq, &total, nullptr, nullptr));
    std::vector<float> seq_k((size_t)kHeads * total * kDim), seq_v(seq_k.size());
    {
        nq_kv_desc out;
        nq_kv_desc_init(&out);
        out.dtype = NQ_DTYPE_F32;
        out.num_tokens = (uint32_t)total;
        out.k = seq_k.data();
        out.v = seq_v.data();
        nq_layout_contiguous(&out.k_layout, (uint32_t)total, kDim);
        nq_layout_contiguous(&out.v_layout, (uint32_t)total, kDim);
        T_OK(nq_sequence_decode(seq, 0, (uint32_t)total, &out, nullptr));
    }

    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back(worker, t, ctx, &inputs, &want, shared, &want[0], seq, &seq_k);
    for (std::thread &t : threads) t.join();

    nq_sequence_free(seq);
    nq_block_free(shared);
    nq_context_free(ctx);
    std::printf("test_threads: pool of %u: %d threads x %d iterations x %zu inputs checked\n", pool_threads, kThreads,
                kIterations, inputs.size());
    return 0;
}

}  // namespace

int main() {
    for (uint32_t pool : {0u, 3u}) scenario(pool);
    if (g_failures) {
        std::fprintf(stderr, "test_threads: %d check(s) failed\n", g_failures.load());
        return 1;
    }
    std::printf("test_threads: every result matched the single-thread one\n");
    return 0;
}
