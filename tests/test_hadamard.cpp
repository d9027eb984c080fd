// The Walsh-Hadamard rotation (src/core/hadamard.h): block sizes, the signed transform
// against a float64 reference written from docs/FORMAT.md (section 1.6), orthogonality,
// and forward-then-inverse to float rounding.
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/hadamard.h"
#include "nq_test.h"

using namespace nqt;

namespace {

const uint32_t kDims[] = {8, 16, 24, 32, 40, 48, 64, 72, 80, 96, 112, 128, 136, 160, 192, 256, 384, 512};

// Largest power of two dividing d, at most 512.
uint32_t ref_block(uint32_t d) {
    uint32_t n = 1;
    while (d % (n * 2) == 0 && n * 2 <= 512) n *= 2;
    return n;
}

// splitmix64 sign pattern of FORMAT.md 1.6.
bool ref_sign_negative(uint32_t d) {
    uint64_t z = 0x6e7175616e74ull + 0x9e3779b97f4a7c15ull * (uint64_t)(d / 64 + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (z >> (d % 64)) & 1;
}

// y = H_n (signs . x) per block, in float64, from the matrix entries (-1)^popcount(i & j).
std::vector<double> ref_forward(const std::vector<double> &x) {
    const uint32_t D = (uint32_t)x.size(), n = ref_block(D);
    std::vector<double> xs(D), y(D, 0.0);
    for (uint32_t d = 0; d < D; ++d) xs[d] = ref_sign_negative(d) ? -x[d] : x[d];
    for (uint32_t b = 0; b < D; b += n)
        for (uint32_t i = 0; i < n; ++i) {
            double s = 0;
            for (uint32_t j = 0; j < n; ++j) s += (__builtin_popcount(i & j) & 1) ? -xs[b + j] : xs[b + j];
            y[b + i] = s;
        }
    return y;
}

double norm2(const std::vector<double> &v) {
    double s = 0;
    for (double x : v) s += x * x;
    return std::sqrt(s);
}

}  // namespace

TEST(Hadamard, BlockSizes) {
    EXPECT_EQ(nq::hadamard_block(64), 64u);
    EXPECT_EQ(nq::hadamard_block(128), 128u);
    EXPECT_EQ(nq::hadamard_block(256), 256u);
    EXPECT_EQ(nq::hadamard_block(512), 512u);
    EXPECT_EQ(nq::hadamard_block(80), 16u);
    EXPECT_EQ(nq::hadamard_block(96), 32u);
    EXPECT_EQ(nq::hadamard_block(8), 8u);
    EXPECT_EQ(nq::hadamard_block(24), 8u);
    for (uint32_t d = 8; d <= 512; d += 8) EXPECT_EQ(nq::hadamard_block(d), ref_block(d)) << d;
}

TEST(Hadamard, SignsFollowTheDocumentedGenerator) {
    int negative = 0;
    for (uint32_t d = 0; d < 512; ++d) {
        ASSERT_EQ(nq::hadamard_sign_negative(d), ref_sign_negative(d)) << d;
        negative += ref_sign_negative(d);
    }
    EXPECT_GT(negative, 200);  // a pattern, not a constant
    EXPECT_LT(negative, 312);
}

// The columns of the forward transform (images of unit vectors) are +-1 vectors, exactly
// the reference's, orthogonal within a block with squared norm n, and zero outside it.
TEST(Hadamard, ForwardMatrixIsSignedOrthogonal) {
    for (uint32_t D : kDims) {
        const uint32_t n = ref_block(D);
        std::vector<std::vector<float>> col(D, std::vector<float>(D));
        for (uint32_t j = 0; j < D; ++j) {
            std::vector<float> e(D, 0.0f);
            e[j] = 1.0f;
            nq::hadamard_forward(e.data(), D);
            std::vector<double> ej(D, 0.0);
            ej[j] = 1.0;
            std::vector<double> want = ref_forward(ej);
            for (uint32_t i = 0; i < D; ++i) ASSERT_EQ((double)e[i], want[i]) << "D " << D << " col " << j << " row " << i;
            col[j] = e;
        }
        for (uint32_t a = 0; a < D; ++a)
            for (uint32_t b = a; b < D; b += (D > 128 ? 7 : 1)) {  // every pair up to 128, a sample above
                double dot = 0;
                for (uint32_t i = 0; i < D; ++i) dot += (double)col[a][i] * col[b][i];
                ASSERT_EQ(dot, a == b ? (double)n : 0.0) << "D " << D << " columns " << a << ", " << b;
            }
    }
}

TEST(Hadamard, ForwardMatchesFloat64AndInverseUndoesIt) {
    for (uint32_t D : kDims) {
        const double log2n = std::log2((double)ref_block(D));
        for (int rep = 0; rep < 20; ++rep) {
            std::vector<float> x(D);
            std::vector<double> xd(D);
            const double scale = std::ldexp(1.0, (int)below(60) - 30);
            for (uint32_t i = 0; i < D; ++i) {
                x[i] = (float)((rep % 3 == 0 ? laplace() : gauss()) * scale);
                xd[i] = x[i];
            }
            std::vector<float> y = x;
            nq::hadamard_forward(y.data(), D);
            std::vector<double> want = ref_forward(xd), yd(y.begin(), y.end());
            std::vector<double> diff(D);
            for (uint32_t i = 0; i < D; ++i) diff[i] = yd[i] - want[i];
            // every butterfly stage rounds once: relative error of order log2(n) * 2^-24
            EXPECT_LE(norm2(diff), 2.0 * log2n * 0x1p-24 * norm2(want) + 1e-300) << "D " << D;

            nq::hadamard_inverse(y.data(), D);
            for (uint32_t i = 0; i < D; ++i) diff[i] = (double)y[i] - xd[i];
            EXPECT_LE(norm2(diff), 4.0 * log2n * 0x1p-24 * norm2(xd) + 1e-300) << "D " << D;
        }
    }
}

// Power-of-two inputs with few bits go through exactly (the inverse's 1/n is exact).
TEST(Hadamard, InverseIsExactOnSmallIntegers) {
    for (uint32_t D : kDims) {
        std::vector<float> x(D);
        for (uint32_t i = 0; i < D; ++i) x[i] = (float)((int)below(201) - 100);
        std::vector<float> y = x;
        nq::hadamard_forward(y.data(), D);
        nq::hadamard_inverse(y.data(), D);
        for (uint32_t i = 0; i < D; ++i) ASSERT_EQ(y[i], x[i]) << "D " << D << " i " << i;
    }
}
