// Helpers shared by the unit tests: the per-test random generator (seeded from the
// time or NQ_TEST_SEED, printed so that a failure reproduces), float64 references of
// the fp16/bf16 formats written from their definitions, and small statistics.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace nqt {

// The run's base seed (NQ_TEST_SEED when set, else random); printed by main.
uint64_t base_seed();
// A generator reseeded at the start of every test from the base seed and the test's
// name, so one test can be rerun alone with the printed seed.
std::mt19937_64 &rng();

inline double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng()); }
inline double gauss() { return std::normal_distribution<double>(0.0, 1.0)(rng()); }
inline double laplace() {
    double u = uniform(-0.5, 0.5);
    return -std::copysign(1.0, u) * std::log1p(-2.0 * std::fabs(u)) / std::sqrt(2.0);  // unit variance
}
// Student t with 3 degrees of freedom scaled to unit variance: heavy tails.
inline double student3() {
    double z = gauss();
    double c = 0;
    for (int i = 0; i < 3; ++i) {
        double g = gauss();
        c += g * g;
    }
    return z / std::sqrt(c / 3.0) / std::sqrt(3.0);
}
inline uint64_t u64() { return rng()(); }
inline uint32_t below(uint32_t n) { return (uint32_t)(rng()() % n); }

// ------------------------------------------------------------------ float formats

inline uint32_t f32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float bits_f32(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Rounds x to the binary format with `mant` fraction bits, smallest normal exponent
// `emin` and largest finite value `max_finite`: round to nearest, ties to even,
// overflow to infinity. Exact for any x that is a float (all steps are exact in
// double).
inline double round_format(double x, int mant, int emin, double max_finite) {
    if (std::isnan(x) || std::isinf(x) || x == 0.0) return x;
    double a = std::fabs(x);
    int e;
    std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1): leading bit has weight 2^(e-1)
    int lead = e - 1;
    if (lead < emin) lead = emin;
    const double q = std::ldexp(1.0, lead - mant);
    double n = a / q;
    double r = std::floor(n);
    double f = n - r;
    if (f > 0.5 || (f == 0.5 && std::fmod(r, 2.0) == 1.0)) r += 1.0;
    double v = r * q;
    if (v > max_finite) v = INFINITY;
    return std::copysign(v, x);
}

constexpr double kF16Max = 65504.0;
inline double ref_round_f16(double x) { return round_format(x, 10, -14, kF16Max); }
inline double ref_round_bf16(double x) {
    return round_format(x, 7, -126, std::ldexp(2.0 - std::ldexp(1.0, -7), 127));
}
inline double ref_round_f32(double x) {
    return round_format(x, 23, -126, std::ldexp(2.0 - std::ldexp(1.0, -23), 127));
}

// The value of fp16 bits (NaN for NaN encodings).
inline double ref_f16_value(uint16_t h) {
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    const int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return man ? NAN : sign * INFINITY;
    if (exp == 0) return sign * std::ldexp((double)man, -24);
    return sign * std::ldexp(1024.0 + man, exp - 25);
}

// fp16 bits of a value representable in fp16 (or infinite).
inline uint16_t ref_f16_bits(double v) {
    uint16_t sign = std::signbit(v) ? 0x8000 : 0;
    double a = std::fabs(v);
    if (std::isinf(a)) return sign | 0x7c00;
    if (a < std::ldexp(1.0, -14)) return sign | (uint16_t)(a / std::ldexp(1.0, -24));
    int e;
    std::frexp(a, &e);
    const int lead = e - 1;
    const uint16_t man = (uint16_t)(a / std::ldexp(1.0, lead - 10) - 1024.0);
    return (uint16_t)(sign | ((lead + 15) << 10) | man);
}

inline double ref_bf16_value(uint16_t b) { return (double)bits_f32((uint32_t)b << 16); }
inline uint16_t ref_bf16_bits(double v) { return (uint16_t)(f32_bits((float)v) >> 16); }

// ------------------------------------------------------------------ statistics

// Signal-to-noise ratio in dB of `approx` against `ref`.
inline double snr_db(const std::vector<double> &ref, const std::vector<double> &approx) {
    double s = 0, n = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        s += ref[i] * ref[i];
        double d = ref[i] - approx[i];
        n += d * d;
    }
    if (n == 0) return INFINITY;
    return 10.0 * std::log10(s / n);
}

}  // namespace nqt
