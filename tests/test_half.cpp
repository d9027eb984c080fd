// fp16 and bf16 conversions (src/core/half.h) against float64 references of the IEEE
// binary16 and bfloat16 formats: every 16-bit value, every rounding boundary, random
// bit patterns.
#include <cmath>
#include <cstdint>

#include "core/half.h"
#include "nq_test.h"

using namespace nqt;

namespace {

bool f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }
bool bf16_is_nan(uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x7f); }

// Checks the library's f32 -> f16 for one float against the reference.
::testing::AssertionResult f16_matches(float x) {
    uint16_t got = nq::f32_to_f16(x);
    if (std::isnan(x)) {
        if (!f16_is_nan(got) || !(got & 0x200) || ((got >> 15) != (f32_bits(x) >> 31)))
            return ::testing::AssertionFailure() << "NaN 0x" << std::hex << f32_bits(x) << " -> 0x" << got;
        return ::testing::AssertionSuccess();
    }
    uint16_t want = ref_f16_bits(ref_round_f16((double)x));
    if (got != want)
        return ::testing::AssertionFailure() << "f32 " << x << " (0x" << std::hex << f32_bits(x) << ") -> 0x" << got
                                             << ", expected 0x" << want;
    return ::testing::AssertionSuccess();
}

::testing::AssertionResult bf16_matches(float x) {
    uint16_t got = nq::f32_to_bf16(x);
    if (std::isnan(x)) {
        if (!bf16_is_nan(got) || !(got & 0x40) || ((got >> 15) != (f32_bits(x) >> 31)))
            return ::testing::AssertionFailure() << "NaN 0x" << std::hex << f32_bits(x) << " -> 0x" << got;
        return ::testing::AssertionSuccess();
    }
    uint16_t want = ref_bf16_bits(ref_round_bf16((double)x));
    if (got != want)
        return ::testing::AssertionFailure() << "f32 " << x << " (0x" << std::hex << f32_bits(x) << ") -> 0x" << got
                                             << ", expected 0x" << want;
    return ::testing::AssertionSuccess();
}

}  // namespace

TEST(Half, F16ToF32EveryValue) {
    for (uint32_t h = 0; h < 65536; ++h) {
        float got = nq::f16_to_f32((uint16_t)h);
        double want = ref_f16_value((uint16_t)h);
        if (std::isnan(want)) {
            ASSERT_TRUE(std::isnan(got)) << std::hex << h;
            ASSERT_EQ(f32_bits(got) >> 31, h >> 15) << std::hex << h;
        } else {
            ASSERT_EQ((double)got, want) << std::hex << h;
            ASSERT_EQ(std::signbit(got), (bool)(h & 0x8000)) << std::hex << h;  // -0 stays -0
        }
    }
}

TEST(Half, F16RoundTripEveryValue) {
    for (uint32_t h = 0; h < 65536; ++h) {
        uint16_t back = nq::f32_to_f16(nq::f16_to_f32((uint16_t)h));
        if (f16_is_nan((uint16_t)h)) {
            ASSERT_TRUE(f16_is_nan(back)) << std::hex << h;
            ASSERT_EQ(back & 0x8000, h & 0x8000);
        } else {
            ASSERT_EQ(back, h) << std::hex << h;
        }
    }
}

// Every fp16 value, the midpoints to its neighbours and the floats next to both: where
// round-to-nearest-even decides.
TEST(Half, F32ToF16AtEveryBoundary) {
    for (uint32_t h = 0; h < 0x7c00; ++h) {
        const double v = ref_f16_value((uint16_t)h);
        const double next = h == 0x7bff ? 65536.0 : ref_f16_value((uint16_t)(h + 1));
        const float mid = (float)((v + next) / 2);  // 12 significant bits: exact in float
        ASSERT_EQ((double)mid, (v + next) / 2);
        const float pts[] = {(float)v, std::nextafter((float)v, INFINITY), std::nextafter((float)v, -INFINITY), mid,
                             std::nextafter(mid, INFINITY), std::nextafter(mid, -INFINITY)};
        for (float p : pts) {
            ASSERT_TRUE(f16_matches(p));
            ASSERT_TRUE(f16_matches(-p));
        }
    }
}

TEST(Half, F32ToF16SpecialValues) {
    const float pts[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e10f,
                         3.4028235e38f, 1e-45f, 2.98e-8f, 2.9802322e-8f /* 2^-25 */, 2.9802326e-8f, 5.9604645e-8f,
                         6.1035156e-5f /* smallest normal */, 6.1035153e-5f, 6.0975552e-5f /* largest subnormal */,
                         1.1754944e-38f, bits_f32(0x7f800001u), bits_f32(0x7fc00000u), bits_f32(0xffbfffffu)};
    for (float p : pts) {
        EXPECT_TRUE(f16_matches(p));
        EXPECT_TRUE(f16_matches(-p));
    }
    EXPECT_EQ(nq::f32_to_f16(65520.0f), 0x7c00);  // the tie above the largest finite rounds to inf
    EXPECT_EQ(nq::f32_to_f16(65519.996f), 0x7bff);
    EXPECT_EQ(nq::f32_to_f16(-0.0f), 0x8000);
}

TEST(Half, F32ToF16RandomBits) {
    for (int i = 0; i < 3000000; ++i) {
        uint32_t u = (uint32_t)u64();
        // Half of the draws with an exponent in fp16's range, where the rounding is busy.
        if (i & 1) u = (u & 0x80ffffffu) | ((uint32_t)(96 + below(48)) << 23);
        ASSERT_TRUE(f16_matches(bits_f32(u)));
    }
}

TEST(Half, Bf16EveryValueAndRoundTrip) {
    for (uint32_t b = 0; b < 65536; ++b) {
        float f = nq::bf16_to_f32((uint16_t)b);
        ASSERT_EQ(f32_bits(f), b << 16) << std::hex << b;
        uint16_t back = nq::f32_to_bf16(f);
        if (bf16_is_nan((uint16_t)b))
            ASSERT_TRUE(bf16_is_nan(back)) << std::hex << b;
        else
            ASSERT_EQ(back, b) << std::hex << b;
    }
}

TEST(Half, F32ToBf16AtEveryBoundary) {
    for (uint32_t b = 0; b < 0x7f80; ++b) {
        const double v = ref_bf16_value((uint16_t)b);
        const double next = b == 0x7f7f ? std::ldexp(1.0, 128) : ref_bf16_value((uint16_t)(b + 1));
        const double mid_d = (v + next) / 2;
        const float pts_base[] = {(float)v, mid_d < 3.4028235e38 ? (float)mid_d : 3.4028235e38f};
        for (float base : pts_base) {
            const float pts[] = {base, std::nextafter(base, INFINITY), std::nextafter(base, -INFINITY)};
            for (float p : pts) {
                ASSERT_TRUE(bf16_matches(p));
                ASSERT_TRUE(bf16_matches(-p));
            }
        }
    }
}

TEST(Half, F32ToBf16RandomBitsAndSpecials) {
    for (int i = 0; i < 3000000; ++i) ASSERT_TRUE(bf16_matches(bits_f32((uint32_t)u64())));
    const float pts[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 3.4028235e38f, 1e-45f, 1.1754942e-38f,
                         bits_f32(0x7f800001u), bits_f32(0xff800001u), bits_f32(0x7f7f8000u), bits_f32(0x7f7f7fffu)};
    for (float p : pts) EXPECT_TRUE(bf16_matches(p));
}
