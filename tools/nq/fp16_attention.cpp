// Attention over an uncompressed fp16 cache with the library's attention kernels and
// the same chunked online softmax as attention over blocks: the baseline `nq bench
// --attention` times. It lives in the tool, not the library (no API serves it), and
// takes only the kernel files from nexusquant_internal: they reference nothing else,
// so every nq_* symbol the tool calls still resolves to libnexusquant.so.
#include "fp16_attention.h"

#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include "../../src/core/half.h"

namespace nqcli {
namespace {

constexpr uint32_t kChunk = 64;

struct F16Job {
    const nq::AttnKernels *ak;
    const uint16_t *k, *v;
    uint32_t seqs, tokens, D, KV, G;
    const float *q;
    float scale;
    float *out, *lse;
    uint32_t workers;
};

void f16_item(const F16Job &j, uint32_t item, std::vector<float> &buf) {
    const uint32_t seq = item / j.KV, g = item % j.KV, D = j.D, R = j.G;
    buf.assign((size_t)R * D * 2 + (size_t)R * kChunk * 2 + 2 * R + D, 0.0f);
    float *q = buf.data(), *acc = q + (size_t)R * D, *L = acc + (size_t)R * D, *P = L + (size_t)R * kChunk;
    float *m = P + (size_t)R * kChunk, *l = m + R, *row = l + R;
    const size_t qh0 = (size_t)seq * j.KV * j.G + (size_t)g * j.G;
    std::memcpy(q, j.q + qh0 * D, sizeof(float) * R * D);
    for (uint32_t r = 0; r < R; ++r) m[r] = -INFINITY;
    const uint16_t *kh = j.k + ((size_t)seq * j.KV + g) * j.tokens * D;
    const uint16_t *vh = j.v + ((size_t)seq * j.KV + g) * j.tokens * D;
    for (uint32_t t0 = 0; t0 < j.tokens; t0 += kChunk) {
        const uint32_t n = j.tokens - t0 < kChunk ? j.tokens - t0 : kChunk;
        if (j.ak) {
            j.ak->f16_logits(kh + (size_t)t0 * D, n, D, q, R, L, kChunk);
        } else {
            for (uint32_t t = 0; t < n; ++t)
                for (uint32_t r = 0; r < R; ++r) {
                    float s = 0.0f;
                    for (uint32_t d = 0; d < D; ++d) s += q[(size_t)r * D + d] * nq::f16_to_f32(kh[(size_t)(t0 + t) * D + d]);
                    L[(size_t)r * kChunk + t] = s;
                }
        }
        for (uint32_t r = 0; r < R; ++r) {
            float *x = L + (size_t)r * kChunk, *p = P + (size_t)r * kChunk;
            float mx = -INFINITY;
            for (uint32_t t = 0; t < n; ++t) {
                x[t] *= j.scale;
                mx = x[t] > mx ? x[t] : mx;
            }
            if (mx > m[r]) {
                const float f = std::exp(m[r] - mx);
                l[r] *= f;
                for (uint32_t d = 0; d < D; ++d) acc[(size_t)r * D + d] *= f;
                m[r] = mx;
            }
            if (j.ak) {
                l[r] += j.ak->exp_sum(x, m[r], p, n);
            } else {
                for (uint32_t t = 0; t < n; ++t) {
                    p[t] = std::exp(x[t] - m[r]);
                    l[r] += p[t];
                }
            }
        }
        if (j.ak) {
            j.ak->f16_accumulate(vh + (size_t)t0 * D, n, D, P, kChunk, R, acc);
        } else {
            for (uint32_t t = 0; t < n; ++t) {
                for (uint32_t d = 0; d < D; ++d) row[d] = nq::f16_to_f32(vh[(size_t)(t0 + t) * D + d]);
                for (uint32_t r = 0; r < R; ++r)
                    for (uint32_t d = 0; d < D; ++d) acc[(size_t)r * D + d] += P[(size_t)r * kChunk + t] * row[d];
            }
        }
    }
    for (uint32_t r = 0; r < R; ++r) {
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        for (uint32_t d = 0; d < D; ++d) j.out[(qh0 + r) * D + d] = acc[(size_t)r * D + d] * inv;
        j.lse[qh0 + r] = l[r] > 0.0f ? m[r] + std::log(l[r]) : -INFINITY;
    }
}

}  // namespace

const nq::AttnKernels *attention_kernels_for(const char *isa) {
    if (!std::strcmp(isa, "avx512")) return nq::attn_kernels_avx512();
    if (!std::strcmp(isa, "avx2")) return nq::attn_kernels_avx2();
    return nullptr;
}

void fp16_attention(const nq::AttnKernels *ak, uint32_t threads, const uint16_t *k, const uint16_t *v, uint32_t seqs,
                    uint32_t kv_heads, uint32_t group, uint32_t tokens, uint32_t head_dim, const float *q, float scale,
                    float *out, float *lse) {
    F16Job j{ak, k, v, seqs, tokens, head_dim, kv_heads, group, q, scale, out, lse, 1};
    const uint32_t items = seqs * kv_heads;
    j.workers = threads < 1 ? 1 : (items < threads ? items : threads);
    auto work = [&j](uint32_t w) {
        std::vector<float> buf;
        for (uint32_t item = w; item < j.seqs * j.KV; item += j.workers) f16_item(j, item, buf);
    };
    std::vector<std::thread> pool;
    for (uint32_t w = 1; w < j.workers; ++w) pool.emplace_back(work, w);
    work(0);
    for (std::thread &t : pool) t.join();
}

}  // namespace nqcli
