// The 8-float group quantisers (src/core/lattice_codec.h). The E8 box codebook is
// rebuilt here from its definition (docs/FORMAT.md 1.4): points p + 1/4 with
// p_i = k_i + c/2, k_i in [-2^(B-1), 2^(B-1) - 1], sum(k) even. The encoder must return a
// nearest codebook point (checked by brute force: the whole codebook for 1 and 2 bits,
// each coordinate's three nearest box values otherwise, which always contains a nearest
// point), decoded points must satisfy the lattice conditions, and every code must
// survive decode -> encode. The same for the scalar codebook.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

#include "core/lattice_codec.h"
#include "nq_test.h"

using namespace nqt;

namespace {

using Pt = std::array<double, 8>;

double dist2(const Pt &a, const double *t) {
    double s = 0;
    for (int i = 0; i < 8; ++i) s += (a[i] - t[i]) * (a[i] - t[i]);
    return s;
}

Pt lib_e8(const float *t, int bits) {
    uint8_t code[8] = {0};
    nq::e8_encode_group(t, bits, code);
    float q[8];
    nq::e8_decode_group(code, bits, q);
    Pt p;
    for (int i = 0; i < 8; ++i) p[i] = q[i];
    return p;
}

// The whole E8 box codebook for small B.
std::vector<Pt> e8_codebook(int bits) {
    const int lo = -(1 << (bits - 1)), n = 1 << bits;
    std::vector<Pt> pts;
    for (int c = 0; c < 2; ++c) {
        int total = 1;
        for (int i = 0; i < 8; ++i) total *= n;
        for (int idx = 0; idx < total; ++idx) {
            int r = idx, sum = 0;
            Pt p;
            for (int i = 0; i < 8; ++i) {
                int k = lo + r % n;
                r /= n;
                sum += k;
                p[i] = k + 0.5 * c + 0.25;
            }
            if (sum % 2 == 0) pts.push_back(p);
        }
    }
    return pts;
}

// Minimum squared distance from t to the E8 box codebook: each coordinate ranges over
// its three nearest box values (a nearest point never needs a farther one: of a
// coordinate's two nearest values one has either parity and is at least as close).
double e8_min_dist_local(const double *t, int bits) {
    const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
    double best = INFINITY;
    for (int c = 0; c < 2; ++c) {
        int cand[8][3];
        for (int i = 0; i < 8; ++i) {
            const double v = t[i] - 0.25 - 0.5 * c;
            std::vector<int> all;
            int f = (int)std::floor(std::max(std::min(v, (double)hi + 2), (double)lo - 2));
            for (int k = f - 3; k <= f + 3; ++k)
                if (k >= lo && k <= hi) all.push_back(k);
            if (all.empty()) all.push_back(v < lo ? lo : hi);
            std::sort(all.begin(), all.end(), [&](int a, int b) { return std::fabs(a - v) < std::fabs(b - v); });
            for (int j = 0; j < 3; ++j) cand[i][j] = all[std::min<size_t>(j, all.size() - 1)];
        }
        for (int idx = 0; idx < 6561; ++idx) {
            int r = idx, sum = 0;
            double d = 0;
            for (int i = 0; i < 8; ++i) {
                int k = cand[i][r % 3];
                r /= 3;
                sum += k;
                double e = k + 0.5 * c + 0.25 - t[i];
                d += e * e;
            }
            if ((sum & 1) == 0) best = std::min(best, d);
        }
    }
    return best;
}

// A decoded point is p + 1/4 with p in one coset of D8, inside the box.
::testing::AssertionResult is_e8_box_point(const Pt &q, int bits) {
    const double lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
    const double frac = q[0] - 0.25 - std::floor(q[0] - 0.25);
    if (frac != 0.0 && frac != 0.5) return ::testing::AssertionFailure() << "q0 " << q[0] << " not on the lattice";
    long sum = 0;
    for (int i = 0; i < 8; ++i) {
        const double k = q[i] - 0.25 - frac;
        if (k != std::floor(k)) return ::testing::AssertionFailure() << "coordinates from different cosets";
        if (k < lo || k > hi) return ::testing::AssertionFailure() << "k " << k << " outside the box";
        sum += (long)k;
    }
    if (sum % 2) return ::testing::AssertionFailure() << "sum of k is odd";
    // Doubled: 2p has one parity in every coordinate and a sum divisible by 4.
    long s2 = 0;
    for (int i = 0; i < 8; ++i) s2 += (long)(2 * (q[i] - 0.25));
    if (s2 % 4) return ::testing::AssertionFailure() << "2p sum " << s2 << " not divisible by 4";
    return ::testing::AssertionSuccess();
}

// Random targets: Gaussian at several scales, far outside the box, exact half-integers
// (rounding ties), box edges, and midpoints of two codebook points (nearest-point ties)
// nudged by a tiny amount.
void random_target(int bits, int kind, float *t) {
    const double half = 1 << (bits - 1);
    switch (kind % 6) {
    case 0:
        for (int i = 0; i < 8; ++i) t[i] = (float)(gauss() * half * 0.6);
        break;
    case 1:
        for (int i = 0; i < 8; ++i) t[i] = (float)(gauss() * half * uniform(2, 50));
        break;
    case 2:  // ties of round_half_up in one coset or the other
        for (int i = 0; i < 8; ++i) t[i] = (float)((int)below((uint32_t)(4 * half)) - 2 * half + 0.25 + 0.5 * below(2) + 0.25 * below(2));
        break;
    case 3:  // on and around the box edges
        for (int i = 0; i < 8; ++i) {
            double edge = below(2) ? half - 0.75 + 0.5 : -half + 0.25;
            t[i] = (float)(edge + 0.25 * ((int)below(5) - 2) + 1e-3 * gauss());
        }
        break;
    case 4: {  // midpoint of two codebook points that differ in a few coordinates
        int k[8], sum = 0;
        const int c = (int)below(2);
        for (int i = 0; i < 8; ++i) {
            k[i] = (int)below((uint32_t)(2 * half)) - (int)half;
            sum += k[i];
        }
        if (sum & 1) k[0] = k[0] == (int)half - 1 ? k[0] - 1 : k[0] + 1;
        for (int i = 0; i < 8; ++i) {
            const double a = k[i] + 0.5 * c + 0.25;
            const double b = (i < 2) ? a + (k[i] < (int)half - 1 ? 1 : -1) : a;
            t[i] = (float)((a + b) / 2 + 1e-6 * gauss());
        }
        break;
    }
    default:  // between the two cosets
        for (int i = 0; i < 8; ++i) t[i] = (float)(std::floor(gauss() * half) + 0.5 + 1e-5 * gauss());
    }
}

std::vector<uint8_t> random_code(int bits) {
    std::vector<uint8_t> c(bits);
    for (auto &b : c) b = (uint8_t)below(256);
    return c;
}

}  // namespace

TEST(E8, DecodedCodesAreExactlyTheCodebookForSmallBits) {
    for (int bits : {1, 2}) {
        std::vector<Pt> book = e8_codebook(bits);
        ASSERT_EQ(book.size(), (size_t)1 << (8 * bits));
        std::set<Pt> want(book.begin(), book.end()), got;
        for (uint32_t code = 0; code < (1u << (8 * bits)); ++code) {
            uint8_t bytes[2] = {(uint8_t)code, (uint8_t)(code >> 8)};
            float q[8];
            nq::e8_decode_group(bytes, bits, q);
            Pt p;
            for (int i = 0; i < 8; ++i) p[i] = q[i];
            ASSERT_TRUE(is_e8_box_point(p, bits)) << "code " << code;
            got.insert(p);
            // decode -> encode gives the code back
            uint8_t again[2] = {0, 0};
            nq::e8_encode_group(q, bits, again);
            ASSERT_EQ(std::memcmp(again, bytes, bits), 0) << "bits " << bits << " code " << code;
        }
        EXPECT_EQ(got, want) << "bits " << bits;  // a bijection onto the codebook
    }
}

TEST(E8, RandomCodesRoundTripForLargerBits) {
    for (int bits = 3; bits <= 8; ++bits)
        for (int rep = 0; rep < 20000; ++rep) {
            std::vector<uint8_t> code = random_code(bits);
            float q[8];
            nq::e8_decode_group(code.data(), bits, q);
            Pt p;
            for (int i = 0; i < 8; ++i) p[i] = q[i];
            ASSERT_TRUE(is_e8_box_point(p, bits)) << "bits " << bits;
            std::vector<uint8_t> again(bits, 0);
            nq::e8_encode_group(q, bits, again.data());
            // The low bit of u_7 is implied by parity: the stored bits must match exactly.
            ASSERT_EQ(again, code) << "bits " << bits;
        }
}

TEST(E8, NearestPointExhaustiveSmallBits) {
    for (int bits : {1, 2}) {
        std::vector<Pt> book = e8_codebook(bits);
        for (int rep = 0; rep < (bits == 1 ? 3000 : 600); ++rep) {
            float t[8];
            random_target(bits, rep, t);
            double td[8];
            for (int i = 0; i < 8; ++i) td[i] = t[i];
            double best = INFINITY;
            for (const Pt &p : book) best = std::min(best, dist2(p, td));
            Pt q = lib_e8(t, bits);
            ASSERT_TRUE(is_e8_box_point(q, bits));
            const double d = dist2(q, td);
            ASSERT_LE(d, best + 1e-5 * (1.0 + best)) << "bits " << bits << " kind " << rep % 6 << " t " << t[0] << " "
                                                      << t[1] << " " << t[2] << " " << t[3] << " " << t[4] << " "
                                                      << t[5] << " " << t[6] << " " << t[7];
            // and the local search agrees with the exhaustive one
            ASSERT_NEAR(e8_min_dist_local(td, bits), best, 1e-9 * (1 + best));
        }
    }
}

TEST(E8, NearestPointLocalSearchAllBits) {
    for (int bits = 1; bits <= 8; ++bits) {
        int exact = 0;
        const int reps = 1500;
        for (int rep = 0; rep < reps; ++rep) {
            float t[8];
            random_target(bits, rep, t);
            double td[8];
            for (int i = 0; i < 8; ++i) td[i] = t[i];
            const double best = e8_min_dist_local(td, bits);
            Pt q = lib_e8(t, bits);
            ASSERT_TRUE(is_e8_box_point(q, bits));
            const double d = dist2(q, td);
            ASSERT_LE(d, best + 1e-5 * (1.0 + best)) << "bits " << bits << " kind " << rep % 6;
            exact += d <= best;
        }
        EXPECT_GT(exact, reps * 95 / 100) << "bits " << bits;  // float rounding only decides near-ties
    }
}

// Far outside the box the nearest point is the corner region: coordinates clamp, and
// parity is repaired inside the box. (After scaling, |t| stays below sqrt(512) / alpha,
// about 750; 1e6 is far beyond anything the pipeline produces.)
TEST(E8, FarOutsideTheBox) {
    for (int bits = 1; bits <= 8; ++bits) {
        const float far[] = {1e3f, -1e3f, 1e5f, -1e5f, 1e6f, -1e6f};
        for (int rep = 0; rep < 200; ++rep) {
            float t[8];
            for (int i = 0; i < 8; ++i) t[i] = below(3) ? far[below(6)] : (float)gauss();
            Pt q = lib_e8(t, bits);
            ASSERT_TRUE(is_e8_box_point(q, bits));
            double td[8];
            for (int i = 0; i < 8; ++i) td[i] = t[i];
            const double best = e8_min_dist_local(td, bits);
            ASSERT_LE(dist2(q, td), best * (1 + 1e-6) + 1e-5) << "bits " << bits;
        }
    }
}

// Identical bytes on every backend need exactly the documented encoder (FORMAT.md 1.4:
// float32 arithmetic, ties of rounding go up, first index on equal parity costs, coset
// 0 on equal errors). Written here from that text and compared byte for byte.
namespace {

void spec_e8_encode(const float *t, int bits, uint8_t *out) {
    const float lo = -(float)(1 << (bits - 1)), hi = (float)((1 << (bits - 1)) - 1);
    float k[2][8], err[2];
    for (int c = 0; c < 2; ++c) {
        float v[8];
        int odd = 0;
        for (int i = 0; i < 8; ++i) {
            v[i] = (t[i] - 0.25f) - 0.5f * (float)c;
            float f = std::floor(v[i]);
            float r = f + ((v[i] - f >= 0.5f) ? 1.0f : 0.0f);
            k[c][i] = std::min(std::max(r, lo), hi);
            odd ^= (int)std::fabs(k[c][i]) & 1;
        }
        if (odd) {
            int best = -1;
            float best_cost = 0, best_alt = 0;
            for (int i = 0; i < 8; ++i) {
                float alt = k[c][i] + (v[i] > k[c][i] ? 1.0f : -1.0f);
                if (alt < lo || alt > hi) alt = k[c][i] - (v[i] > k[c][i] ? 1.0f : -1.0f);
                const float a = alt - v[i], b = k[c][i] - v[i];
                const float cost = a * a - b * b;
                if (best < 0 || cost < best_cost) {
                    best = i;
                    best_cost = cost;
                    best_alt = alt;
                }
            }
            k[c][best] = best_alt;
        }
        err[c] = 0.0f;
        for (int i = 0; i < 8; ++i) {
            const float d = k[c][i] - v[i];
            err[c] += d * d;
        }
    }
    const int c = err[1] < err[0] ? 1 : 0;
    const int half = 1 << (bits - 1);
    uint64_t a = (uint64_t)c;
    for (int i = 0; i < 7; ++i) a |= (uint64_t)((int)k[c][i] + half) << (1 + i * bits);
    a |= (uint64_t)(((int)k[c][7] + half) >> 1) << (1 + 7 * bits);
    for (int b = 0; b < bits; ++b) out[b] = (uint8_t)(a >> (8 * b));
}

}  // namespace

TEST(E8, BytesFollowTheDocumentedEncoder) {
    for (int bits = 1; bits <= 8; ++bits)
        for (int rep = 0; rep < 20000; ++rep) {
            float t[8];
            random_target(bits, rep, t);
            uint8_t want[8] = {0}, got[8] = {0};
            spec_e8_encode(t, bits, want);
            nq::e8_encode_group(t, bits, got);
            ASSERT_EQ(std::memcmp(want, got, bits), 0) << "bits " << bits << " kind " << rep % 6;
        }
}

// -------------------------------------------------------------------- scalar codec

TEST(Scalar, EveryCodeRoundTripsAndLevelsAreTheGrid) {
    for (int bits = 1; bits <= 8; ++bits) {
        const double mid = ((1 << bits) - 1) / 2.0;
        const int reps = bits <= 2 ? (1 << (8 * bits)) : 30000;
        for (int rep = 0; rep < reps; ++rep) {
            std::vector<uint8_t> code(bits);
            if (bits <= 2) {
                code[0] = (uint8_t)rep;
                if (bits == 2) code[1] = (uint8_t)(rep >> 8);
            } else {
                code = random_code(bits);
            }
            float q[8];
            nq::scalar_decode_group(code.data(), bits, q);
            uint64_t acc = 0;
            for (int b = 0; b < bits; ++b) acc |= (uint64_t)code[b] << (8 * b);
            for (int i = 0; i < 8; ++i) {
                const double u = (double)((acc >> (i * bits)) & ((1u << bits) - 1));
                ASSERT_EQ((double)q[i], u - mid) << "bits " << bits;
            }
            std::vector<uint8_t> again(bits, 0);
            nq::scalar_encode_group(q, bits, again.data());
            ASSERT_EQ(again, code) << "bits " << bits;
        }
    }
}

TEST(Scalar, NearestLevelPerCoordinate) {
    for (int bits = 1; bits <= 8; ++bits) {
        const int levels = 1 << bits;
        const double mid = (levels - 1) / 2.0;
        for (int rep = 0; rep < 3000; ++rep) {
            float t[8];
            random_target(bits, rep, t);
            if (rep % 7 == 0)  // exact midpoints between levels
                for (int i = 0; i < 8; ++i) t[i] = (float)((int)below(levels + 2) - 1 - mid + 0.5);
            uint8_t code[8] = {0};
            nq::scalar_encode_group(t, bits, code);
            float q[8];
            nq::scalar_decode_group(code, bits, q);
            for (int i = 0; i < 8; ++i) {
                double best = INFINITY;
                for (int u = 0; u < levels; ++u) best = std::min(best, std::fabs(u - mid - (double)t[i]));
                ASSERT_LE(std::fabs((double)q[i] - t[i]), best + 1e-6 * (1 + std::fabs(t[i])))
                    << "bits " << bits << " t " << t[i];
            }
        }
    }
}
