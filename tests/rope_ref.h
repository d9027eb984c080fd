// Float64 references of RoPE as Hugging Face transformers defines it
// (modeling_rope_utils: default, linear, dynamic NTK, llama3, YaRN), written from the
// formulas: the inverse frequencies of the rotary dims, the factor on cos/sin, and the
// rotation of a key for both pairings.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace nqt {

struct RopeRef {
    int scaling = 0;  // nq_rope_scaling values: 0 none, 1 linear, 2 dynamic NTK, 3 llama3, 4 YaRN
    uint32_t dim = 128;  // rotary dims
    double theta = 10000.0;
    double factor = 1.0;
    uint32_t orig = 0;  // original_max_position_embeddings
    double low = 1.0, high = 4.0;
    double beta_fast = 32.0, beta_slow = 1.0;
    double attention = 0.0;  // 0 = derived (YaRN)
    std::string name;
};

constexpr double kRefPi = 3.14159265358979323846;

// base^(-2i/dim) for i < dim/2 (_compute_default_rope_parameters).
inline std::vector<double> ref_default_inv_freq(double base, uint32_t dim) {
    std::vector<double> f(dim / 2);
    for (uint32_t i = 0; i < dim / 2; ++i) f[i] = 1.0 / std::pow(base, (2.0 * i) / dim);
    return f;
}

// Inverse frequencies for keys rotated while the sequence had seq_len tokens, and the
// factor that multiplies cos and sin.
inline std::vector<double> ref_inv_freq(const RopeRef &p, uint32_t seq_len, double *attention) {
    *attention = 1.0;
    const double dim = p.dim;
    switch (p.scaling) {
    case 1: {  // _compute_linear_scaling_rope_parameters
        std::vector<double> f = ref_default_inv_freq(p.theta, p.dim);
        for (double &x : f) x /= p.factor;
        return f;
    }
    case 2: {  // _compute_dynamic_ntk_parameters: a length below the original keeps it
        double L = seq_len > p.orig ? (double)seq_len : (double)p.orig;
        double base = p.theta * std::pow(p.factor * L / p.orig - (p.factor - 1.0), dim / (dim - 2.0));
        return ref_default_inv_freq(base, p.dim);
    }
    case 3: {  // _compute_llama3_parameters
        std::vector<double> f = ref_default_inv_freq(p.theta, p.dim);
        const double low_wavelen = p.orig / p.low, high_wavelen = p.orig / p.high;
        for (double &x : f) {
            const double wavelen = 2.0 * kRefPi / x;
            const double llama = wavelen > low_wavelen ? x / p.factor : x;
            const double smooth = (p.orig / wavelen - p.low) / (p.high - p.low);
            const double smoothed = (1.0 - smooth) * llama / p.factor + smooth * llama;
            const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
            x = medium ? smoothed : llama;
        }
        return f;
    }
    case 4: {  // _compute_yarn_parameters
        *attention = p.attention > 0 ? p.attention : (p.factor <= 1.0 ? 1.0 : 0.1 * std::log(p.factor) + 1.0);
        auto correction_dim = [&](double rotations) {
            return dim * std::log(p.orig / (rotations * 2.0 * kRefPi)) / (2.0 * std::log(p.theta));
        };
        double low = std::max(std::floor(correction_dim(p.beta_fast)), 0.0);
        double high = std::min(std::ceil(correction_dim(p.beta_slow)), dim - 1.0);
        if (low == high) high += 0.001;
        std::vector<double> f(p.dim / 2);
        for (uint32_t i = 0; i < p.dim / 2; ++i) {
            const double pos_freq = std::pow(p.theta, (2.0 * i) / dim);
            const double extrapolation = 1.0 / pos_freq, interpolation = 1.0 / (p.factor * pos_freq);
            const double ramp = std::min(1.0, std::max(0.0, (i - low) / (high - low)));
            const double extrapolation_factor = 1.0 - ramp;
            f[i] = interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor;
        }
        return f;
    }
    default: return ref_default_inv_freq(p.theta, p.dim);
    }
}

// x <- attention * R(position * inv_freq) x on the rotary dims (what the model does to
// a key). interleaved: pairs (2i, 2i+1); else (i, i + dim/2).
inline void ref_rotate(double *x, bool interleaved, uint32_t rotary_dims, const std::vector<double> &inv_freq,
                       double attention, int64_t position) {
    const uint32_t F = rotary_dims / 2;
    for (uint32_t i = 0; i < F; ++i) {
        const uint32_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + F;
        const double angle = (double)position * inv_freq[i];
        const double c = std::cos(angle) * attention, s = std::sin(angle) * attention;
        const double xa = x[a], xb = x[b];
        x[a] = xa * c - xb * s;
        x[b] = xb * c + xa * s;
    }
}

// A spread of configurations: every scaling, several thetas, rotary sizes and factors.
inline std::vector<RopeRef> ref_rope_cases() {
    std::vector<RopeRef> v;
    auto add = [&](RopeRef p, const char *name) {
        p.name = name;
        v.push_back(p);
    };
    RopeRef p;
    add(p, "none-128");
    p.dim = 64;
    p.theta = 1e6;
    add(p, "none-64-theta1e6");
    p = RopeRef();
    p.dim = 32;  // partial rotary of a larger head
    add(p, "none-partial32");
    p = RopeRef();
    p.scaling = 1;
    p.factor = 4.0;
    add(p, "linear-4");
    p.dim = 80;
    p.factor = 2.5;
    add(p, "linear-2.5-dim80");
    p = RopeRef();
    p.scaling = 2;
    p.factor = 2.0;
    p.orig = 2048;
    add(p, "dynamic-2");
    p.factor = 8.0;
    p.dim = 96;
    p.theta = 500000.0;
    add(p, "dynamic-8-dim96");
    p = RopeRef();  // Llama 3.1
    p.scaling = 3;
    p.theta = 500000.0;
    p.factor = 8.0;
    p.orig = 8192;
    add(p, "llama3.1");
    p.factor = 32.0;  // Llama 3.2 small models
    p.dim = 64;
    add(p, "llama3.2-dim64");
    p.low = 2.0;
    p.high = 16.0;
    p.orig = 4096;
    add(p, "llama3-custom-bands");
    p = RopeRef();  // Qwen2.5-style YaRN
    p.scaling = 4;
    p.theta = 1e6;
    p.factor = 4.0;
    p.orig = 32768;
    add(p, "yarn-4");
    p.theta = 10000.0;
    p.factor = 16.0;
    p.orig = 4096;
    p.dim = 64;
    p.beta_fast = 16.0;
    p.beta_slow = 2.0;
    add(p, "yarn-16-betas");
    p.attention = 1.25;
    add(p, "yarn-explicit-attention");
    p.factor = 1.0;
    p.attention = 0.0;
    add(p, "yarn-factor1");
    return v;
}

}  // namespace nqt
