// RoPE (src/core/rope.h): inverse frequencies for every scaling against float64
// references written from the definitions Hugging Face transformers uses (default,
// linear, dynamic NTK, llama3, YaRN with its attention factor), the float tables, the
// rotation for both pairings and partial rotary dims, and removal undoing it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/rope.h"
#include "nexusquant.h"
#include "nq_test.h"
#include "rope_ref.h"

using namespace nqt;

namespace {

using Params = RopeRef;

nq::RopeSpec spec_of(const Params &p, uint8_t pairing) {
    nq::RopeSpec s;
    s.pairing = pairing;
    s.scaling = (uint8_t)p.scaling;
    s.rotary_dims = p.dim;
    s.original_max_position = p.orig;
    s.theta = p.theta;
    s.factor = p.factor;
    s.low_freq_factor = p.low;
    s.high_freq_factor = p.high;
    s.beta_fast = p.beta_fast;
    s.beta_slow = p.beta_slow;
    s.attention_factor = p.attention;
    return s;
}

std::vector<Params> all_params() { return ref_rope_cases(); }

double float_ulp(double x) {
    float f = (float)std::fabs(x);
    return (double)std::nextafter(f, INFINITY) - (double)f;
}

}  // namespace

TEST(Rope, InternalCodesAreThePublicEnums) {
    EXPECT_EQ((int)nq::kRopeNone, (int)NQ_ROPE_SCALING_NONE);
    EXPECT_EQ((int)nq::kRopeLinear, (int)NQ_ROPE_SCALING_LINEAR);
    EXPECT_EQ((int)nq::kRopeDynamicNtk, (int)NQ_ROPE_SCALING_DYNAMIC_NTK);
    EXPECT_EQ((int)nq::kRopeLlama3, (int)NQ_ROPE_SCALING_LLAMA3);
    EXPECT_EQ((int)nq::kRopeYarn, (int)NQ_ROPE_SCALING_YARN);
    EXPECT_EQ((int)nq::kPairSplitHalf, (int)NQ_ROPE_SPLIT_HALF);
    EXPECT_EQ((int)nq::kPairInterleaved, (int)NQ_ROPE_INTERLEAVED);
}

TEST(Rope, PairsAreAsDocumented) {
    uint32_t a, b;
    nq::rope_pair(nq::kPairSplitHalf, 64, 5, &a, &b);
    EXPECT_EQ(a, 5u);
    EXPECT_EQ(b, 37u);
    nq::rope_pair(nq::kPairInterleaved, 64, 5, &a, &b);
    EXPECT_EQ(a, 10u);
    EXPECT_EQ(b, 11u);
}

TEST(Rope, InverseFrequenciesMatchTheReference) {
    for (const Params &p : all_params()) {
        for (uint32_t seq_len : {1u, 100u, 2048u, 2049u, 5000u, 40000u, 200000u}) {
            double m_ref, m_lib = -1;
            std::vector<double> want = ref_inv_freq(p, seq_len, &m_ref);
            std::vector<double> got(p.dim / 2, -1.0);
            nq::rope_inv_freq(spec_of(p, nq::kPairSplitHalf), seq_len, got.data(), &m_lib);
            EXPECT_NEAR(m_lib, m_ref, 1e-15 * m_ref) << p.name;
            for (size_t i = 0; i < want.size(); ++i)
                ASSERT_NEAR(got[i], want[i], 1e-13 * want[i]) << p.name << " seq_len " << seq_len << " i " << i;
        }
    }
}

// Values a reader can check by hand.
TEST(Rope, KnownValues) {
    Params p;
    p.scaling = nq::kRopeLlama3 + 0;
    p.theta = 500000.0;
    p.factor = 8.0;
    p.orig = 8192;
    double m;
    std::vector<double> f(64);
    nq::rope_inv_freq(spec_of(p, nq::kPairSplitHalf), 1, f.data(), &m);
    EXPECT_EQ(f[0], 1.0);                                           // high frequency: unchanged
    EXPECT_NEAR(f[63], std::pow(500000.0, -126.0 / 128) / 8, 1e-25);  // low frequency: divided by factor
    EXPECT_EQ(m, 1.0);

    p = Params();
    p.scaling = nq::kRopeYarn + 0;
    p.factor = 4.0;
    p.orig = 32768;
    p.theta = 1e6;
    nq::rope_inv_freq(spec_of(p, nq::kPairSplitHalf), 1, f.data(), &m);
    EXPECT_NEAR(m, 0.1 * std::log(4.0) + 1.0, 1e-15);  // 1.1386...
    EXPECT_EQ(f[0], 1.0);                               // extrapolated
    EXPECT_NEAR(f[63], std::pow(1e6, -126.0 / 128) / 4, 1e-22);  // interpolated

    p = Params();
    p.scaling = nq::kRopeDynamicNtk + 0;
    p.factor = 2.0;
    p.orig = 1000;
    nq::rope_inv_freq(spec_of(p, nq::kPairSplitHalf), 1000, f.data(), &m);  // at the original length: no change
    for (int i = 0; i < 64; ++i) EXPECT_NEAR(f[i], std::pow(10000.0, -i / 64.0), 1e-15);
    nq::rope_inv_freq(spec_of(p, nq::kPairSplitHalf), 3000, f.data(), &m);  // base * 5^(128/126)
    EXPECT_NEAR(f[1], 1.0 / std::pow(10000.0 * std::pow(5.0, 128.0 / 126.0), 2.0 / 128), 1e-15);
}

TEST(Rope, TablesAreTheReferenceRoundedOnce) {
    for (const Params &p : all_params()) {
        double m_ref;
        const uint32_t seq_len = 1 + below(100000);
        std::vector<double> want = ref_inv_freq(p, seq_len, &m_ref);
        std::vector<double> inv(p.dim / 2);
        double m;
        nq::rope_inv_freq(spec_of(p, nq::kPairSplitHalf), seq_len, inv.data(), &m);
        const uint32_t F = p.dim / 2;
        std::vector<float> cf(F), sf(F), ci(F), si(F);
        for (int rep = 0; rep < 50; ++rep) {
            const int64_t pos = rep == 0 ? 0 : (rep == 1 ? 4294967295ll : (int64_t)below(1u << (1 + rep % 20)));
            nq::rope_tables(inv.data(), F, m, pos, cf.data(), sf.data(), ci.data(), si.data());
            for (uint32_t i = 0; i < F; ++i) {
                const double angle = (double)pos * want[i];
                // angle error from inv_freq rounding grows with the position
                const double slack = 1e-9 + 4e-16 * std::fabs(angle);
                const double c = std::cos(angle), s = std::sin(angle);
                ASSERT_LE(std::fabs(cf[i] - c * m_ref), 0.5 * float_ulp(c * m_ref) + slack) << p.name << " " << pos;
                ASSERT_LE(std::fabs(sf[i] - s * m_ref), 0.5 * float_ulp(s * m_ref) + slack) << p.name << " " << pos;
                ASSERT_LE(std::fabs(ci[i] - c / m_ref), 0.5 * float_ulp(c / m_ref) + slack) << p.name << " " << pos;
                ASSERT_LE(std::fabs(si[i] - s / m_ref), 0.5 * float_ulp(s / m_ref) + slack) << p.name << " " << pos;
            }
        }
    }
}

// The rotation of the model (keys x -> m R(angle) x on the rotary dims) against
// float64, for both pairings and partial rotary dims, and removal undoing it.
TEST(Rope, RotateMatchesFloat64AndUnrotateUndoesIt) {
    for (const Params &base : all_params()) {
        for (uint8_t pairing : {nq::kPairSplitHalf, nq::kPairInterleaved}) {
            Params p = base;
            const uint32_t D = std::max<uint32_t>(p.dim, 128) + 8 * below(3);  // dims past rotary_dims stay
            const uint32_t F = p.dim / 2;
            double m_ref;
            const uint32_t seq_len = 1 + below(50000);
            std::vector<double> want_f = ref_inv_freq(p, seq_len, &m_ref);
            std::vector<double> inv(F);
            double m;
            nq::rope_inv_freq(spec_of(p, pairing), seq_len, inv.data(), &m);
            std::vector<float> cf(F), sf(F), ci(F), si(F);
            for (int rep = 0; rep < 20; ++rep) {
                const int64_t pos = (int64_t)below(seq_len);
                nq::rope_tables(inv.data(), F, m, pos, cf.data(), sf.data(), ci.data(), si.data());
                std::vector<float> x(D);
                double norm = 0;
                for (uint32_t d = 0; d < D; ++d) {
                    x[d] = (float)gauss();
                    norm += (double)x[d] * x[d];
                }
                norm = std::sqrt(norm);
                std::vector<float> y = x;
                nq::rope_rotate(y.data(), pairing, p.dim, cf.data(), sf.data());
                for (uint32_t i = 0; i < F; ++i) {
                    const uint32_t a = pairing == nq::kPairInterleaved ? 2 * i : i;
                    const uint32_t b = pairing == nq::kPairInterleaved ? 2 * i + 1 : i + F;
                    const double angle = (double)pos * want_f[i];
                    const double c = std::cos(angle) * m_ref, s = std::sin(angle) * m_ref;
                    const double ya = x[a] * c - x[b] * s, yb = x[b] * c + x[a] * s;
                    const double tol = 4 * 0x1p-24 * m_ref * norm + 1e-9 * norm * (1 + std::fabs(angle) * 1e-6);
                    ASSERT_NEAR(y[a], ya, tol) << p.name << " pairing " << (int)pairing << " pair " << i;
                    ASSERT_NEAR(y[b], yb, tol) << p.name << " pairing " << (int)pairing << " pair " << i;
                }
                for (uint32_t d = p.dim; d < D; ++d) ASSERT_EQ(y[d], x[d]) << "non-rotary dim " << d;
                nq::rope_unrotate(y.data(), pairing, p.dim, ci.data(), si.data());
                for (uint32_t d = 0; d < D; ++d)
                    ASSERT_NEAR(y[d], x[d], 8 * 0x1p-24 * norm) << p.name << " pairing " << (int)pairing << " dim " << d;
            }
        }
    }
}
