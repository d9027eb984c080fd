// Sweeps the codebook step (alpha, in units of the rotated vector's rms) for each codec
// and bit budget on Gaussian and Laplace vectors, printing the SNR of each choice.
// The constants in src/core/vector_codec.h come from this sweep (docs/DESIGN.md).
//   g++ -O2 -ffp-contract=off -Isrc tools/tune_alpha.cpp -o tune_alpha && ./tune_alpha
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "core/vector_codec.h"

using namespace nq;

static double snr(const std::vector<float> &x, int codec, int bits, float alpha, uint32_t D) {
    double err = 0, sig = 0;
    float y[kMaxHeadDim], r[kMaxHeadDim];
    uint8_t codes[kMaxHeadDim];
    for (size_t v = 0; v < x.size() / D; ++v) {
        for (uint32_t d = 0; d < D; ++d) y[d] = x[v * D + d];
        hadamard_forward(y, D);
        float rms = sqrtf(tree_sum_squares(y, D) / D);
        uint16_t s = f32_to_bf16(alpha * rms);
        encode_rotated(y, D, codec, bits, s, codes);
        decode_rotated(codes, D, codec, bits, s, r);
        hadamard_inverse(r, D);
        for (uint32_t d = 0; d < D; ++d) {
            double e = r[d] - x[v * D + d];
            err += e * e;
            sig += (double)x[v * D + d] * x[v * D + d];
        }
    }
    return 10 * log10(sig / err);
}

int main() {
    const uint32_t D = 128;
    std::mt19937 rng(7);
    std::normal_distribution<float> nd;
    std::exponential_distribution<float> ed;
    std::vector<float> g(4000 * D), l(4000 * D);
    for (auto &v : g) v = nd(rng);
    for (auto &v : l) v = (rng() & 1 ? 1.f : -1.f) * ed(rng);
    for (int bits = 1; bits <= 8; ++bits) {
        for (int codec : {kCodecE8, kCodecScalar}) {
            float best = 0, best_snr = -1e9, cur = codec_alpha(codec, bits);
            for (float a = cur * 0.7f; a <= cur * 1.3f; a *= 1.01f) {
                double s = snr(g, codec, bits, a, D);
                if (s > best_snr) best_snr = s, best = a;
            }
            printf("bits %d %-6s current alpha %.4f: %.3f dB | best alpha %.4f: %.3f dB (laplace at best %.3f dB)\n",
                   bits, codec == kCodecE8 ? "e8" : "scalar", cur, snr(g, codec, bits, cur, D), best, best_snr,
                   snr(l, codec, bits, best, D));
        }
    }
}
