// nq_golden_regen: rewrites the golden files (expected.txt, archives/, inputs/) from
// the library as built, with the scalar reference instruction set on one thread. Not
// run by the tests: the files pin the format, and rewriting them is a deliberate act
// (a new format version) whose diff gets reviewed.
//
//   build/tests/golden/nq_golden_regen [DIR]     (DIR defaults to the source tree's tests/golden)
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "golden_vectors.h"

using namespace golden;

int main(int argc, char **argv) {
    if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
        std::fprintf(stderr, "usage: %s [DIR]\n", argv[0]);
        return 2;
    }
    if (argc == 2) setenv("NQ_GOLDEN_DIR", argv[1], 1);
    const std::string d = dir();
    mkdir((d + "/archives").c_str(), 0755);
    mkdir((d + "/inputs").c_str(), 0755);

    std::ofstream f(d + "/expected.txt");
    if (!f) {
        std::fprintf(stderr, "cannot write %s/expected.txt\n", d.c_str());
        return 1;
    }
    f << "# nexusquant golden vectors, block format version 1 (docs/FORMAT.md, \"Golden vectors\").\n"
         "# Written by nq_golden_regen (scalar reference, one thread); the cases are in golden_cases.cpp.\n"
         "# zstd "
      << zstd_version()
      << "\n"
         "# Archives with zstd sections are compared byte for byte only under the zstd version above.\n"
         "# Digests are XXH3-64 (seed 0); decoded = K then V of every kept token, [heads][kept][head_dim].\n"
         "# case resident_bytes resident_xxh3 archive_bytes archive_xxh3 zstd_archive_bytes zstd_archive_xxh3 "
         "decoded_f32_xxh3 decoded_native_xxh3\n";
    for (const Case &c : cases()) {
        Expected e;
        std::vector<uint8_t> stored, zstd;
        std::string error;
        if (!run_cpu(c, NQ_ISA_SCALAR, 1, &e, &stored, &zstd, &error)) {
            std::fprintf(stderr, "%s: %s\n", c.name, error.c_str());
            return 1;
        }
        f << to_line(c.name, e) << '\n';
        bool ok = true;
        if (c.store_archives) {
            ok &= write_hex(archive_path(c, false), stored,
                            std::string("archive form of golden case ") + c.name + ", sections stored (no zstd)");
            ok &= write_hex(archive_path(c, true), zstd,
                            std::string("archive form of golden case ") + c.name + ", zstd level 3 where smaller");
        }
        if (c.store_inputs) {
            const Inputs in = generate(c);
            const std::string what = std::string("golden case ") + c.name + ": ";
            ok &= write_hex(input_path(c, "k"), in.k, what + "K [heads][tokens][head_dim], little-endian");
            ok &= write_hex(input_path(c, "v"), in.v, what + "V [heads][tokens][head_dim], little-endian");
            ok &= write_hex(input_path(c, "positions"), bytes_of(in.positions), what + "positions, int64 LE");
            if (c.scores == Scores::Given)
                ok &= write_hex(input_path(c, "scores"), bytes_of(in.scores), what + "scores [heads][tokens], fp32 LE");
        }
        if (!ok) {
            std::fprintf(stderr, "%s: writing its files under %s failed\n", c.name, d.c_str());
            return 1;
        }
        std::printf("%s\n", to_line(c.name, e).c_str());
    }
    return f ? 0 : 1;
}
