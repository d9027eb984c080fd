#include "rope.h"

#include <algorithm>
#include <cmath>

namespace nq {
namespace {

constexpr double kPi = 3.14159265358979323846;

double yarn_correction_dim(double num_rotations, double dim, double base, double max_pos) {
    return (dim * std::log(max_pos / (num_rotations * 2.0 * kPi))) / (2.0 * std::log(base));
}

}  // namespace

void rope_inv_freq(const RopeSpec &spec, uint32_t seq_len, double *inv_freq, double *mscale) {
    const uint32_t dim = spec.rotary_dims;
    const uint32_t nf = dim / 2;
    double base = spec.theta;
    *mscale = 1.0;
    if (spec.scaling == kRopeDynamicNtk && spec.original_max_position > 0) {
        double L = std::max<double>(seq_len, spec.original_max_position);
        double orig = spec.original_max_position;
        base = base * std::pow(spec.factor * L / orig - (spec.factor - 1.0), (double)dim / (double)(dim - 2));
    }
    for (uint32_t i = 0; i < nf; ++i) inv_freq[i] = 1.0 / std::pow(base, (double)(2 * i) / (double)dim);

    switch (spec.scaling) {
    case kRopeLinear:
        for (uint32_t i = 0; i < nf; ++i) inv_freq[i] /= spec.factor;
        break;
    case kRopeLlama3: {
        const double orig = spec.original_max_position;
        const double low_wavelen = orig / spec.low_freq_factor;
        const double high_wavelen = orig / spec.high_freq_factor;
        for (uint32_t i = 0; i < nf; ++i) {
            double f = inv_freq[i];
            double wavelen = 2.0 * kPi / f;
            if (wavelen > low_wavelen) {
                inv_freq[i] = f / spec.factor;
            } else if (wavelen >= high_wavelen) {
                double smooth = (orig / wavelen - spec.low_freq_factor) / (spec.high_freq_factor - spec.low_freq_factor);
                inv_freq[i] = (1.0 - smooth) * f / spec.factor + smooth * f;
            }
        }
        break;
    }
    case kRopeYarn: {
        const double orig = spec.original_max_position;
        double low = std::floor(yarn_correction_dim(spec.beta_fast, dim, spec.theta, orig));
        double high = std::ceil(yarn_correction_dim(spec.beta_slow, dim, spec.theta, orig));
        low = std::max(low, 0.0);
        high = std::min(high, (double)(dim - 1));
        if (low == high) high += 0.001;
        for (uint32_t i = 0; i < nf; ++i) {
            double extrap = inv_freq[i];
            double interp = extrap / spec.factor;
            double ramp = std::min(1.0, std::max(0.0, ((double)i - low) / (high - low)));
            double extrap_factor = 1.0 - ramp;
            inv_freq[i] = interp * (1.0 - extrap_factor) + extrap * extrap_factor;
        }
        *mscale = spec.attention_factor > 0.0
                      ? spec.attention_factor
                      : (spec.factor > 1.0 ? 0.1 * std::log(spec.factor) + 1.0 : 1.0);
        break;
    }
    default:
        break;
    }
}

void rope_tables(const double *inv_freq, uint32_t num_freq, double mscale, int64_t position, float *cos_fwd,
                 float *sin_fwd, float *cos_inv, float *sin_inv) {
    for (uint32_t i = 0; i < num_freq; ++i) {
        double angle = (double)position * inv_freq[i];
        double c = std::cos(angle), s = std::sin(angle);
        if (cos_fwd) cos_fwd[i] = (float)(c * mscale);
        if (sin_fwd) sin_fwd[i] = (float)(s * mscale);
        if (cos_inv) cos_inv[i] = (float)(c / mscale);
        if (sin_inv) sin_inv[i] = (float)(s / mscale);
    }
}

}  // namespace nq
