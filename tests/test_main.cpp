// main of the unit-test programs: picks the run's seed (NQ_TEST_SEED or random),
// prints it, and reseeds the shared generator at the start of every test.
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "nq_test.h"

namespace nqt {
namespace {

uint64_t g_base_seed = 0;
std::mt19937_64 g_rng;

uint64_t mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t pick_seed() {
    if (const char *s = std::getenv("NQ_TEST_SEED")) {
        char *end = nullptr;
        uint64_t v = std::strtoull(s, &end, 0);
        if (end && end != s && *end == '\0') return v;
        std::fprintf(stderr, "NQ_TEST_SEED=%s is not a number; using a random seed\n", s);
    }
    std::random_device rd;
    uint64_t t = (uint64_t)std::chrono::high_resolution_clock::now().time_since_epoch().count();
    return mix(((uint64_t)rd() << 32) ^ rd() ^ t);
}

class SeedListener : public ::testing::EmptyTestEventListener {
    void OnTestStart(const ::testing::TestInfo &info) override {
        std::string name = std::string(info.test_suite_name()) + "." + info.name();
        uint64_t h = 1469598103934665603ull;  // FNV-1a of the test's name
        for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
        g_rng.seed(mix(g_base_seed ^ h));
    }
    void OnTestEnd(const ::testing::TestInfo &info) override {
        if (info.result() && info.result()->Failed())
            std::printf("[  SEED  ] reproduce with NQ_TEST_SEED=%" PRIu64 " --gtest_filter=%s.%s\n", g_base_seed,
                        info.test_suite_name(), info.name());
    }
};

}  // namespace

uint64_t base_seed() { return g_base_seed; }
std::mt19937_64 &rng() { return g_rng; }

}  // namespace nqt

int main(int argc, char **argv) {
    ::testing::InitGoogleTest(&argc, argv);
    nqt::g_base_seed = nqt::pick_seed();
    if (!GTEST_FLAG_GET(list_tests)) std::printf("[  SEED  ] NQ_TEST_SEED=%" PRIu64 "\n", nqt::g_base_seed);
    ::testing::UnitTest::GetInstance()->listeners().Append(new nqt::SeedListener);
    return RUN_ALL_TESTS();
}
