// Quality of the two codecs through the public API, at equal bits: the SNR of E8 and
// of the scalar quantiser on Gaussian, Laplace and heavy-tailed (Student t, 3 degrees
// of freedom) data, every bit budget. E8 must beat scalar by at least 0.3 dB at 2, 3
// and 4 bits on Gaussian data, and reach the SNR docs/DESIGN.md reports.
#include <cmath>
#include <cstdint>
#include <cstdio>

#include "api_harness.h"

using namespace nqt;

namespace {

// SNR (dB) of keys and values compressed with k_bits = v_bits = bits.
double measure(nq_codec codec, uint32_t bits, const Values &K, nq_kv_desc kv) {
    nq_config c = plain_config(K.H, K.D, bits, bits);
    c.codec = codec;
    Ctx ctx = make_ctx(c);
    Block b = compress(ctx.get(), kv);
    if (!b) return -INFINITY;
    Decoded d = decode_all(ctx.get(), b.get());
    EXPECT_EQ(info_of(b.get()).code_bytes, 2ull * K.H * K.T * K.D * bits / 8);
    return snr_db(K.x, d.k.x);
}

}  // namespace

TEST(CodecSnr, E8BeatsScalarAtEqualBits) {
    const uint32_t H = 4, T = 512, D = 128;
    const Dist dists[] = {Dist::Gauss, Dist::Laplace, Dist::Student3};
    const char *names[] = {"gauss", "laplace", "student3"};
    for (int di = 0; di < 3; ++di) {
        Values K = random_values(H, T, D, dists[di]);
        Tensor kt(NQ_DTYPE_F32, Layout::HTD, H, T, D), vt(NQ_DTYPE_F32, Layout::HTD, H, T, D);
        store(kt, K);
        store(vt, K);
        nq_kv_desc kv = kv_desc(kt, vt, T);
        for (uint32_t bits = 1; bits <= 8; ++bits) {
            const double e8 = measure(NQ_CODEC_E8, bits, K, kv), sc = measure(NQ_CODEC_SCALAR, bits, K, kv);
            std::printf("[   SNR  ] %-8s %u bits: E8 %6.2f dB  scalar %6.2f dB  gain %+5.2f dB\n", names[di], bits, e8, sc,
                        e8 - sc);
            // about 6 dB per bit
            EXPECT_GT(e8, 5.0 * bits - 1.5) << names[di] << " " << bits;
            EXPECT_GT(sc, 5.0 * bits - 2.0) << names[di] << " " << bits;
            if (dists[di] == Dist::Gauss) {
                if (bits >= 2 && bits <= 4) EXPECT_GE(e8 - sc, 0.3) << bits << " bits";
                if (bits <= 4) EXPECT_NEAR(e8, e8_snr_floor(bits) + 0.6, 0.35) << bits << " bits (DESIGN.md table)";
                if (bits >= 2) EXPECT_GT(e8 - sc, 0.2) << bits << " bits";
            } else if (bits >= 2 && bits <= 4) {
                EXPECT_GT(e8 - sc, 0.2) << names[di] << " " << bits << " bits";
            }
        }
    }
}
