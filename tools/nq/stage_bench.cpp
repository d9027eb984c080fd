#include "stage_bench.h"

#include <cstring>

#include "core/format.h"
#include "core/hadamard.h"
#include "core/rope.h"
#include "core/vector_codec.h"

namespace nqcli {

Timing measure(uint32_t repeat, double min_seconds, const std::function<void()> &fn,
               const std::function<void()> &setup) {
    Timing t;
    double total = 0.0;
    while (t.runs.size() < repeat || total < min_seconds) {
        if (setup) setup();
        double t0 = now_seconds();
        fn();
        t.runs.push_back(now_seconds() - t0);
        total += t.runs.back();
        if (t.runs.size() >= 100000) break;
    }
    t.median_s = median(t.runs);
    return t;
}

namespace {

// Keeps results alive so that the compiler cannot drop the work.
volatile float g_sink;

}  // namespace

std::vector<StageResult> stage_bench(const KvData &kv, const PipelineOptions &opt, uint32_t bits, uint32_t repeat,
                                     double min_seconds) {
    const uint32_t D = kv.head_dim, H = kv.heads;
    if (!nq::head_dim_supported(D)) return {};
    // At most 64Ki vectors: enough to leave the caches, short enough to repeat.
    const uint32_t T = std::min<uint32_t>(kv.tokens, std::max<uint32_t>(1u, 65536u / H));
    const size_t N = (size_t)H * T;
    std::vector<float> rows(N * D), rotated(N * D);
    for (uint32_t t = 0; t < T; ++t)
        for (uint32_t h = 0; h < H; ++h) kv.load_row(false, 0, h, t, &rows[((size_t)t * H + h) * D]);
    rotated = rows;
    for (size_t i = 0; i < N; ++i) nq::hadamard_forward(&rotated[i * D], D);
    const int codec = opt.codec == NQ_CODEC_SCALAR ? nq::kCodecScalar : nq::kCodecE8;
    const size_t code_bytes = (size_t)D * bits / 8;
    std::vector<uint8_t> codes(N * code_bytes);
    std::vector<uint16_t> scales(N);
    for (size_t i = 0; i < N; ++i) {
        nq::vector_scale(&rotated[i * D], D, codec, (int)bits, &scales[i]);
        nq::encode_rotated(&rotated[i * D], D, codec, (int)bits, scales[i], &codes[i * code_bytes]);
    }

    nq::RopeSpec spec;
    spec.pairing = opt.pairing == NQ_ROPE_INTERLEAVED ? nq::kPairInterleaved : nq::kPairSplitHalf;
    spec.rotary_dims = opt.rotary_dims ? opt.rotary_dims : D;
    spec.theta = opt.theta;
    double inv_freq[nq::kMaxHeadDim / 2], mscale = 1.0;
    nq::rope_inv_freq(spec, T, inv_freq, &mscale);
    const uint32_t nf = spec.rotary_dims / 2;

    std::vector<StageResult> out;
    auto add = [&](const char *name, const std::function<void()> &fn) {
        Timing t = measure(repeat, min_seconds, fn);
        StageResult r;
        r.name = name;
        r.seconds = t.median_s;
        r.vectors = N;
        r.gbps = t.median_s > 0 ? (double)N * D * 2 / t.median_s / 1e9 : 0.0;
        r.ns_per_vector = t.median_s * 1e9 / (double)N;
        out.push_back(r);
    };
    float row[nq::kMaxHeadDim];
    add("rope_remove", [&] {
        float c_f[nq::kMaxHeadDim / 2], s_f[nq::kMaxHeadDim / 2], c_i[nq::kMaxHeadDim / 2], s_i[nq::kMaxHeadDim / 2];
        float acc = 0;
        for (uint32_t t = 0; t < T; ++t) {
            nq::rope_tables(inv_freq, nf, mscale, t, c_f, s_f, c_i, s_i);
            for (uint32_t h = 0; h < H; ++h) {
                std::memcpy(row, &rows[((size_t)t * H + h) * D], D * 4);
                nq::rope_unrotate(row, spec.pairing, spec.rotary_dims, c_i, s_i);
                acc += row[0];
            }
        }
        g_sink = acc;
    });
    add("hadamard_forward", [&] {
        float acc = 0;
        for (size_t i = 0; i < N; ++i) {
            std::memcpy(row, &rows[i * D], D * 4);
            nq::hadamard_forward(row, D);
            acc += row[0];
        }
        g_sink = acc;
    });
    add(codec == nq::kCodecE8 ? "quantise_e8" : "quantise_scalar", [&] {
        uint8_t tmp[nq::kMaxHeadDim];
        uint32_t acc = 0;
        for (size_t i = 0; i < N; ++i) {
            uint16_t s = 0;
            nq::vector_scale(&rotated[i * D], D, codec, (int)bits, &s);
            nq::encode_rotated(&rotated[i * D], D, codec, (int)bits, s, tmp);
            acc += tmp[0];
        }
        g_sink = (float)acc;
    });
    add(codec == nq::kCodecE8 ? "dequantise_e8" : "dequantise_scalar", [&] {
        float acc = 0;
        for (size_t i = 0; i < N; ++i) {
            nq::decode_rotated(&codes[i * code_bytes], D, codec, (int)bits, scales[i], row);
            acc += row[0];
        }
        g_sink = acc;
    });
    add("hadamard_inverse", [&] {
        float acc = 0;
        for (size_t i = 0; i < N; ++i) {
            std::memcpy(row, &rotated[i * D], D * 4);
            nq::hadamard_inverse(row, D);
            acc += row[0];
        }
        g_sink = acc;
    });
    return out;
}

}  // namespace nqcli
