// A main() for the fuzz targets in builds without libFuzzer: runs every file named on
// the command line (directories: every file in them) through LLVMFuzzerTestOneInput
// once. Options starting with '-' are accepted and ignored, so CTest passes the same
// arguments (-runs=0 DIR...) to this driver and to a libFuzzer build.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

namespace {

int run_file(const std::filesystem::path &p) {
    std::ifstream f(p, std::ios::binary);
    if (!f) {
        std::fprintf(stderr, "cannot read %s\n", p.c_str());
        return 1;
    }
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    // A heap copy of exactly the input's size, as libFuzzer gives it.
    std::vector<uint8_t> exact(bytes.begin(), bytes.end());
    LLVMFuzzerTestOneInput(exact.empty() ? nullptr : exact.data(), exact.size());
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    size_t ran = 0;
    int bad = 0;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (!arg.empty() && arg[0] == '-') continue;
        const std::filesystem::path p(arg);
        if (std::filesystem::is_directory(p)) {
            std::vector<std::filesystem::path> files;
            for (const auto &e : std::filesystem::directory_iterator(p))
                if (e.is_regular_file() && e.path().filename().string()[0] != '.') files.push_back(e.path());
            std::sort(files.begin(), files.end());
            for (const auto &f : files) {
                bad |= run_file(f);
                ++ran;
            }
        } else {
            bad |= run_file(p);
            ++ran;
        }
    }
    std::printf("%s: replayed %zu inputs\n", argv[0], ran);
    return bad;
}
