// Golden vectors of the block formats (docs/FORMAT.md, "Golden vectors"): a table of
// small cases, the deterministic generator of their inputs, and the files that hold
// what the library must produce for them (tests/golden/expected.txt, archives/,
// inputs/). Shared by the CPU test (every instruction set), the GPU test and the
// regeneration tool; it uses the public C API only.
//
// The generator is part of the pinned contract: a decoder in another language can
// rebuild every input from this description (inputs/ holds a few of them verbatim to
// check such a rebuild).
//   splitmix64: state s = case seed; next(): s += 0x9e3779b97f4a7c15; z = s;
//     z = (z ^ z>>30) * 0xbf58476d1ce4e5b9; z = (z ^ z>>27) * 0x94d049bb133111eb;
//     return z ^ z>>31 (all mod 2^64).
//   tri(r) = ((r & 0xffffff) + ((r >> 24) & 0xffffff) - 2^24) * 2^-23, in [-2, 2)
//   unit(r) = (r >> 40) * 2^-24, in [0, 1)
// Draws, in this order:
//   1. per dim d of the keys: r; channel scale = (r >> 60) == 0 ? 4 + ((r >> 56) & 7) : 1
//   2. K, then V; per head h, per token t: one row draw r, kind = r >> 59:
//        0 the row is all zeros (its D element draws are still made),
//        1 tiny row (x 2^-14 for f16, 2^-100 for bf16, 2^-130 for f32),
//        2 large row (x 2^6 for f16, 2^40 for bf16 and f32), else x 1;
//      then per dim d: element = tri(next()) * row factor (* channel scale for K),
//      computed in float64, rounded to float32, then to the dtype (nearest even).
//   3. positions: start, then for tokens 1..T-1 the previous + gap, gap = 1 (contiguous,
//      no draws), 1 + next() % 3 (gapped) or 2048 + next() % 4096 (wide).
//   4. given scores (when the case has them): per head, per token, unit(next()) (fp32).
// K and V are [heads][tokens][head_dim], contiguous, little-endian.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "nexusquant.h"

namespace golden {

enum class Positions { Contiguous, Gapped, Wide };
enum class Scores { None, KeyNorm, Given };

struct Case {
    const char *name;
    uint64_t seed;
    uint32_t heads, head_dim, tokens;
    nq_dtype dtype;
    nq_codec codec;
    uint32_t k_bits, v_bits;
    nq_rope_mode rope;
    nq_rope_pairing pairing;
    uint32_t rotary_dims;  // 0 = head_dim
    nq_rope_scaling scaling;
    double factor;
    uint32_t original_max_position;
    int evict_mode;  // 0 = no eviction, else an nq_evict_mode
    float evict_fraction;
    uint32_t sink_tokens, recent_window, fp16_sinks, fp16_window;
    uint32_t evict_page_size;
    Scores scores;
    Positions positions;
    int64_t start_position;
    bool store_archives;  // full archive bytes under archives/
    bool store_inputs;    // raw inputs under inputs/
    uint32_t key_centering = 0;  // nq_config.key_centering (FORMAT.md 1.8)
};

// One step of splitmix64 (the generator's source of bits).
uint64_t splitmix64_next(uint64_t *state);

// Every case; names are unique and stable (they key the files).
const std::vector<Case> &cases();

// The generated inputs of a case.
struct Inputs {
    std::vector<uint8_t> k, v;        // [heads][tokens][head_dim] in the case's dtype
    std::vector<int64_t> positions;   // tokens entries
    std::vector<float> scores;        // [heads][tokens] when the case gives scores
};
Inputs generate(const Case &c);

// The context configuration of a case (CPU instruction set cap, threads, zstd level).
nq_config config_for(const Case &c, nq_cpu_isa isa, uint32_t threads, int zstd_level);
// The K/V descriptor of host (or device) copies of the inputs.
nq_kv_desc kv_desc_for(const Case &c, const Inputs &in, void *k, void *v, nq_memory memory);
// Scores of the case (kind NONE/KEY_NORM: an nq_score_desc of kind KEY_NORM).
nq_score_desc scores_for(const Case &c, const Inputs &in);

// What the library must produce for a case.
struct Expected {
    uint64_t resident_bytes = 0, resident_xxh3 = 0;
    uint64_t archive_bytes = 0, archive_xxh3 = 0;    // stored sections (zstd off)
    uint64_t zarchive_bytes = 0, zarchive_xxh3 = 0;  // zstd level 3
    uint64_t decoded_f32_xxh3 = 0;                   // every kept token, K then V, f32
    uint64_t decoded_native_xxh3 = 0;                // the same in the input dtype
    bool operator==(const Expected &o) const;
};
std::string to_line(const std::string &name, const Expected &e);

struct ExpectedFile {
    unsigned zstd_version = 0;  // ZSTD_versionNumber() of the library that wrote it
    std::vector<std::pair<std::string, Expected>> rows;
    const Expected *find(const std::string &name) const;
};
// Reads expected.txt; false with a message on a missing or malformed file.
bool read_expected(const std::string &path, ExpectedFile *out, std::string *error);

// The directory of the golden files: $NQ_GOLDEN_DIR, else the source tree's.
std::string dir();
// Hex files: 32 bytes a line, lower case; '#' lines are comments.
bool read_hex(const std::string &path, std::vector<uint8_t> *out);
bool write_hex(const std::string &path, const std::vector<uint8_t> &bytes, const std::string &comment);

// File names under dir().
std::string archive_path(const Case &c, bool zstd);
std::string input_path(const Case &c, const char *what);  // "k", "v", "positions", "scores"

// The little-endian bytes of positions (int64) and scores (fp32) as stored in inputs/.
std::vector<uint8_t> bytes_of(const std::vector<int64_t> &v);
std::vector<uint8_t> bytes_of(const std::vector<float> &v);

// XXH3-64 of the decoded K then V of every kept token, [heads][kept][head_dim].
uint64_t decoded_digest(const std::vector<uint8_t> &k, const std::vector<uint8_t> &v);
uint64_t xxh3(const void *data, size_t bytes);

// Runs a case on the CPU backend (compress, both archive forms, decodes) and returns
// what it produced; archives written are returned in *stored / *zstd when not NULL.
bool run_cpu(const Case &c, nq_cpu_isa isa, uint32_t threads, Expected *out, std::vector<uint8_t> *stored,
             std::vector<uint8_t> *zstd, std::string *error);

uint32_t dtype_bytes(nq_dtype t);
// ZSTD_versionNumber() of the zstd the tests run with.
unsigned zstd_version();

}  // namespace golden
