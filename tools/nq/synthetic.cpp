#include "synthetic.h"

#include <cmath>

#include "cli.h"

namespace nqcli {

uint64_t SplitMix64::next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double SplitMix64::uniform() { return ((double)(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

double SplitMix64::normal() {
    if (have_spare_) {
        have_spare_ = false;
        return spare_;
    }
    const double two_pi = 6.283185307179586;
    double r = std::sqrt(-2.0 * std::log(uniform()));
    double a = two_pi * uniform();
    spare_ = r * std::sin(a);
    have_spare_ = true;
    return r * std::cos(a);
}

double SplitMix64::laplace() {
    double u = uniform() - 0.5;
    return u < 0 ? std::log(1.0 + 2.0 * u) : -std::log(1.0 - 2.0 * u);
}

SynthKind synth_kind_from_name(const std::string &name) {
    if (name == "gaussian") return SynthKind::Gaussian;
    if (name == "outlier") return SynthKind::Outlier;
    throw CliError("--synthetic '" + name + "': must be gaussian or outlier");
}

const char *synth_kind_name(SynthKind k) { return k == SynthKind::Gaussian ? "gaussian" : "outlier"; }

namespace {

uint64_t stream_seed(uint64_t seed, uint64_t tensor, uint64_t layer, uint64_t head) {
    SplitMix64 m(seed ^ 0x6e712d73796e7468ull);  // "nq-synth"
    uint64_t s = m.next();
    s ^= tensor * 0xd1b54a32d192ed03ull + layer * 0x8cb92ba72f3d8dd7ull + head * 0xabc98388fb8fac03ull;
    return SplitMix64(s).next();
}

void fill(const SynthSpec &sp, int tensor, std::vector<float> &out) {
    const size_t D = sp.head_dim, T = sp.tokens;
    out.resize((size_t)sp.layers * sp.heads * T * D);
    const bool outlier = sp.kind == SynthKind::Outlier;
    for (uint32_t l = 0; l < sp.layers; ++l)
        for (uint32_t h = 0; h < sp.heads; ++h) {
            SplitMix64 rng(stream_seed(sp.seed, (uint64_t)tensor, l, h));
            std::vector<float> gain(D, 1.0f);
            if (outlier && tensor == 0) {
                const uint32_t n_out = D >= 8 ? 4 : 1;
                for (uint32_t i = 0; i < n_out;) {
                    size_t c = (size_t)(rng.next() % D);
                    if (gain[c] != 1.0f) continue;
                    gain[c] = 20.0f;
                    ++i;
                }
            }
            float *dst = out.data() + ((size_t)l * sp.heads + h) * T * D;
            for (size_t i = 0; i < T * D; ++i) {
                double x = rng.normal() * gain[i % D];
                if (outlier && rng.uniform() < 1.0 / 64.0) x += 4.0 * rng.laplace();
                dst[i] = (float)x;
            }
        }
}

}  // namespace

void synth_generate(const SynthSpec &spec, std::vector<float> &k, std::vector<float> &v) {
    fill(spec, 0, k);
    fill(spec, 1, v);
}

}  // namespace nqcli
