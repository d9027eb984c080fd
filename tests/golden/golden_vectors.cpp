// The generator of the golden inputs (specified in golden_vectors.h), the files of
// expectations, and one case run on the CPU backend.
#include "golden_vectors.h"

#include <xxhash.h>
#include <zstd.h>

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#ifndef NQ_GOLDEN_SOURCE_DIR
#define NQ_GOLDEN_SOURCE_DIR "tests/golden"
#endif

namespace golden {

namespace {

struct Splitmix64 {
    uint64_t s;
    uint64_t next() { return splitmix64_next(&s); }
};

double tri(uint64_t r) {
    const int64_t a = (int64_t)(r & 0xffffff), b = (int64_t)((r >> 24) & 0xffffff);
    return std::ldexp((double)(a + b - ((int64_t)1 << 24)), -23);
}
double unit(uint64_t r) { return std::ldexp((double)(r >> 40), -24); }

uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// IEEE binary16, round to nearest even (written from the definition, independent of
// the library's conversions).
uint16_t to_f16(float f) {
    const uint32_t x = bits_of(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds past 65504
    if (ax < 0x38800000u)                                        // below 2^-14: subnormal (or 1024 = 2^-14)
        return (uint16_t)(sign | (uint32_t)std::nearbyint(std::ldexp((double)std::fabs(f), 24)));
    uint32_t h = ((((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7fffffu) >> 13));
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return (uint16_t)(sign | h);
}

uint16_t to_bf16(float f) {
    const uint32_t x = bits_of(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

void put(std::vector<uint8_t> &buf, size_t index, nq_dtype dt, double value) {
    const float f = (float)value;
    if (dt == NQ_DTYPE_F32) {
        std::memcpy(&buf[index * 4], &f, 4);
    } else {
        const uint16_t h = dt == NQ_DTYPE_F16 ? to_f16(f) : to_bf16(f);
        buf[index * 2] = (uint8_t)(h & 0xff);
        buf[index * 2 + 1] = (uint8_t)(h >> 8);
    }
}

int row_exponent(int kind, nq_dtype dt) {
    if (kind == 1) return dt == NQ_DTYPE_F16 ? -14 : dt == NQ_DTYPE_BF16 ? -100 : -130;
    if (kind == 2) return dt == NQ_DTYPE_F16 ? 6 : 40;
    return 0;
}

std::string hex64(uint64_t v) {
    char b[20];
    std::snprintf(b, sizeof b, "%016" PRIx64, v);
    return b;
}

struct CtxFree {
    void operator()(nq_context *c) const { nq_context_free(c); }
};
struct BlockFree {
    void operator()(nq_block *b) const { nq_block_free(b); }
};
using Ctx = std::unique_ptr<nq_context, CtxFree>;
using Block = std::unique_ptr<nq_block, BlockFree>;

bool fail(std::string *error, const std::string &what) {
    if (error) *error = what + ": " + nq_last_error();
    return false;
}

bool serialize(nq_context *ctx, const nq_block *b, std::vector<uint8_t> *out, std::string *error) {
    size_t bound = 0, written = 0;
    if (nq_block_serialize_bound(b, &bound) != NQ_OK) return fail(error, "nq_block_serialize_bound");
    out->assign(bound, 0);
    if (nq_block_serialize(ctx, b, out->data(), bound, &written) != NQ_OK) return fail(error, "nq_block_serialize");
    out->resize(written);
    return true;
}

bool decode(nq_context *ctx, const nq_block *b, nq_dtype dt, uint64_t *digest, std::string *error) {
    nq_block_info info;
    std::memset(&info, 0, sizeof info);
    info.size = sizeof info;
    if (nq_block_get_info(b, &info) != NQ_OK) return fail(error, "nq_block_get_info");
    const uint32_t K = info.tokens_kept;
    std::vector<uint8_t> k((size_t)info.num_heads * K * info.head_dim * dtype_bytes(dt)), v(k.size());
    nq_kv_desc out;
    nq_kv_desc_init(&out);
    out.dtype = dt;
    out.num_tokens = K;
    out.k = k.data();
    out.v = v.data();
    nq_layout_contiguous(&out.k_layout, K, info.head_dim);
    nq_layout_contiguous(&out.v_layout, K, info.head_dim);
    if (nq_decode(ctx, b, 0, K, &out, nullptr) != NQ_OK) return fail(error, "nq_decode");
    *digest = decoded_digest(k, v);
    return true;
}

}  // namespace

uint64_t splitmix64_next(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint32_t dtype_bytes(nq_dtype t) { return t == NQ_DTYPE_F32 ? 4 : 2; }

Inputs generate(const Case &c) {
    Splitmix64 rng{c.seed};
    const uint32_t H = c.heads, T = c.tokens, D = c.head_dim;
    std::vector<double> chan(D);
    for (uint32_t d = 0; d < D; ++d) {
        const uint64_t r = rng.next();
        chan[d] = (r >> 60) == 0 ? 4.0 + (double)((r >> 56) & 7) : 1.0;
    }
    Inputs in;
    for (int tensor = 0; tensor < 2; ++tensor) {
        std::vector<uint8_t> &buf = tensor == 0 ? in.k : in.v;
        buf.assign((size_t)H * T * D * dtype_bytes(c.dtype), 0);
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t t = 0; t < T; ++t) {
                const int kind = (int)(rng.next() >> 59);
                const double row = kind == 0 ? 0.0 : std::ldexp(1.0, row_exponent(kind, c.dtype));
                for (uint32_t d = 0; d < D; ++d) {
                    const double x = tri(rng.next()) * row * (tensor == 0 ? chan[d] : 1.0);
                    put(buf, ((size_t)h * T + t) * D + d, c.dtype, x);
                }
            }
    }
    in.positions.resize(T);
    int64_t p = c.start_position;
    for (uint32_t t = 0; t < T; ++t) {
        if (t > 0) {
            if (c.positions == Positions::Contiguous) p += 1;
            else if (c.positions == Positions::Gapped) p += 1 + (int64_t)(rng.next() % 3);
            else p += 2048 + (int64_t)(rng.next() % 4096);
        }
        in.positions[t] = p;
    }
    if (c.scores == Scores::Given) {
        in.scores.resize((size_t)H * T);
        for (auto &s : in.scores) s = (float)unit(rng.next());
    }
    return in;
}

nq_config config_for(const Case &c, nq_cpu_isa isa, uint32_t threads, int zstd_level) {
    nq_config cfg;
    nq_config_init(&cfg);
    cfg.head_dim = c.head_dim;
    cfg.num_kv_heads = c.heads;
    cfg.preset = NQ_PRESET_CUSTOM;
    cfg.codec = c.codec;
    cfg.k_bits = c.k_bits;
    cfg.v_bits = c.v_bits;
    cfg.evict_fraction = c.evict_mode ? c.evict_fraction : 0.0f;
    cfg.evict_mode = c.evict_mode ? (nq_evict_mode)c.evict_mode : NQ_EVICT_PER_HEAD;
    cfg.evict_page_size = c.evict_page_size;
    cfg.sink_tokens = (int32_t)c.sink_tokens;
    cfg.recent_window = (int32_t)c.recent_window;
    cfg.fp16_sinks = (int32_t)c.fp16_sinks;
    cfg.fp16_window = (int32_t)c.fp16_window;
    cfg.rope.mode = c.rope;
    cfg.rope.pairing = c.pairing;
    cfg.rope.rotary_dims = c.rotary_dims;
    cfg.rope.scaling = c.scaling;
    cfg.rope.factor = c.factor;
    cfg.rope.original_max_position = c.original_max_position;
    cfg.cpu_isa = isa;
    cfg.num_threads = threads;
    cfg.archive_zstd_level = zstd_level;
    cfg.key_centering = c.key_centering;
    return cfg;
}

nq_kv_desc kv_desc_for(const Case &c, const Inputs &in, void *k, void *v, nq_memory memory) {
    nq_kv_desc kv;
    nq_kv_desc_init(&kv);
    kv.dtype = c.dtype;
    kv.memory = memory;
    kv.num_tokens = c.tokens;
    kv.k = k;
    kv.v = v;
    nq_layout_contiguous(&kv.k_layout, c.tokens, c.head_dim);
    nq_layout_contiguous(&kv.v_layout, c.tokens, c.head_dim);
    // Contiguous cases take the common path (no positions array, start_position).
    kv.positions = c.positions == Positions::Contiguous ? nullptr : in.positions.data();
    kv.start_position = c.start_position;
    return kv;
}

nq_score_desc scores_for(const Case &c, const Inputs &in) {
    nq_score_desc s;
    nq_score_desc_init(&s);
    if (c.scores == Scores::Given) {
        s.kind = NQ_SCORES_GIVEN;
        s.scores = in.scores.data();
        s.score_stride_head = c.tokens;
        s.score_stride_token = 1;
    }
    return s;
}

bool Expected::operator==(const Expected &o) const {
    return resident_bytes == o.resident_bytes && resident_xxh3 == o.resident_xxh3 &&
           archive_bytes == o.archive_bytes && archive_xxh3 == o.archive_xxh3 &&
           zarchive_bytes == o.zarchive_bytes && zarchive_xxh3 == o.zarchive_xxh3 &&
           decoded_f32_xxh3 == o.decoded_f32_xxh3 && decoded_native_xxh3 == o.decoded_native_xxh3;
}

std::string to_line(const std::string &name, const Expected &e) {
    std::ostringstream s;
    s << name << ' ' << e.resident_bytes << ' ' << hex64(e.resident_xxh3) << ' ' << e.archive_bytes << ' '
      << hex64(e.archive_xxh3) << ' ' << e.zarchive_bytes << ' ' << hex64(e.zarchive_xxh3) << ' '
      << hex64(e.decoded_f32_xxh3) << ' ' << hex64(e.decoded_native_xxh3);
    return s.str();
}

const Expected *ExpectedFile::find(const std::string &name) const {
    for (const auto &r : rows)
        if (r.first == name) return &r.second;
    return nullptr;
}

bool read_expected(const std::string &path, ExpectedFile *out, std::string *error) {
    std::ifstream f(path);
    if (!f) {
        *error = "cannot open " + path;
        return false;
    }
    *out = ExpectedFile{};
    std::string line;
    int n = 0;
    while (std::getline(f, line)) {
        ++n;
        if (line.empty()) continue;
        if (line[0] == '#') {
            unsigned v = 0;
            if (std::sscanf(line.c_str(), "# zstd %u", &v) == 1) out->zstd_version = v;
            continue;
        }
        std::istringstream s(line);
        std::string name, h[6];
        Expected e;
        if (!(s >> name >> e.resident_bytes >> h[0] >> e.archive_bytes >> h[1] >> e.zarchive_bytes >> h[2] >> h[3] >>
              h[4])) {
            *error = path + ":" + std::to_string(n) + ": malformed line";
            return false;
        }
        uint64_t *dst[] = {&e.resident_xxh3, &e.archive_xxh3, &e.zarchive_xxh3, &e.decoded_f32_xxh3,
                           &e.decoded_native_xxh3};
        for (int i = 0; i < 5; ++i) {
            char *end = nullptr;
            *dst[i] = std::strtoull(h[i].c_str(), &end, 16);
            if (h[i].size() != 16 || *end) {
                *error = path + ":" + std::to_string(n) + ": bad digest '" + h[i] + "'";
                return false;
            }
        }
        out->rows.emplace_back(name, e);
    }
    return true;
}

std::string dir() {
    const char *e = std::getenv("NQ_GOLDEN_DIR");
    return e && *e ? e : NQ_GOLDEN_SOURCE_DIR;
}

bool read_hex(const std::string &path, std::vector<uint8_t> *out) {
    std::ifstream f(path);
    if (!f) return false;
    out->clear();
    std::string line;
    while (std::getline(f, line)) {
        if (!line.empty() && line[0] == '#') continue;
        int hi = -1;
        for (char ch : line) {
            int v;
            if (ch >= '0' && ch <= '9') v = ch - '0';
            else if (ch >= 'a' && ch <= 'f') v = ch - 'a' + 10;
            else if (ch >= 'A' && ch <= 'F') v = ch - 'A' + 10;
            else if (ch == ' ' || ch == '\t' || ch == '\r') continue;
            else return false;
            if (hi < 0) {
                hi = v;
            } else {
                out->push_back((uint8_t)(hi << 4 | v));
                hi = -1;
            }
        }
        if (hi >= 0) return false;
    }
    return true;
}

bool write_hex(const std::string &path, const std::vector<uint8_t> &bytes, const std::string &comment) {
    std::ofstream f(path);
    if (!f) return false;
    std::istringstream c(comment);
    std::string line;
    while (std::getline(c, line)) f << "# " << line << '\n';
    static const char *digits = "0123456789abcdef";
    for (size_t i = 0; i < bytes.size(); ++i) {
        f << digits[bytes[i] >> 4] << digits[bytes[i] & 15];
        if (i % 32 == 31 || i + 1 == bytes.size()) f << '\n';
    }
    return (bool)f;
}

std::string archive_path(const Case &c, bool zstd) {
    return dir() + "/archives/" + c.name + (zstd ? ".zstd.nqa.hex" : ".nqa.hex");
}

std::string input_path(const Case &c, const char *what) {
    return dir() + "/inputs/" + c.name + "." + what + ".hex";
}

std::vector<uint8_t> bytes_of(const std::vector<int64_t> &v) {
    std::vector<uint8_t> b(v.size() * 8);
    for (size_t i = 0; i < v.size(); ++i)
        for (int j = 0; j < 8; ++j) b[i * 8 + j] = (uint8_t)((uint64_t)v[i] >> (8 * j));
    return b;
}

std::vector<uint8_t> bytes_of(const std::vector<float> &v) {
    std::vector<uint8_t> b(v.size() * 4);
    for (size_t i = 0; i < v.size(); ++i)
        for (int j = 0; j < 4; ++j) b[i * 4 + j] = (uint8_t)(bits_of(v[i]) >> (8 * j));
    return b;
}

uint64_t xxh3(const void *data, size_t bytes) { return XXH3_64bits(data, bytes); }

uint64_t decoded_digest(const std::vector<uint8_t> &k, const std::vector<uint8_t> &v) {
    std::vector<uint8_t> both(k);
    both.insert(both.end(), v.begin(), v.end());
    return xxh3(both.data(), both.size());
}

bool run_cpu(const Case &c, nq_cpu_isa isa, uint32_t threads, Expected *out, std::vector<uint8_t> *stored,
             std::vector<uint8_t> *zstd, std::string *error) {
    Inputs in = generate(c);
    const nq_config cfg = config_for(c, isa, threads, -1), zcfg = config_for(c, isa, threads, 3);
    nq_context *p = nullptr, *zp = nullptr;
    if (nq_context_create(&cfg, &p) != NQ_OK) return fail(error, "nq_context_create");
    Ctx ctx(p);
    if (nq_context_create(&zcfg, &zp) != NQ_OK) return fail(error, "nq_context_create (zstd)");
    Ctx zctx(zp);
    const nq_kv_desc kv = kv_desc_for(c, in, in.k.data(), in.v.data(), NQ_MEMORY_HOST);
    const nq_score_desc sc = scores_for(c, in);
    nq_block *b = nullptr;
    if (nq_compress_kv(ctx.get(), &kv, c.scores == Scores::None ? nullptr : &sc, nullptr, &b) != NQ_OK)
        return fail(error, "nq_compress_kv");
    Block blk(b);

    Expected e;
    const void *data = nullptr;
    size_t bytes = 0;
    if (nq_block_data(blk.get(), &data, &bytes) != NQ_OK) return fail(error, "nq_block_data");
    e.resident_bytes = bytes;
    if (nq_block_digest(blk.get(), &e.resident_xxh3) != NQ_OK) return fail(error, "nq_block_digest");
    if (e.resident_xxh3 != xxh3(data, bytes)) {
        *error = "nq_block_digest is not XXH3-64 of nq_block_data";
        return false;
    }

    std::vector<uint8_t> a, za;
    if (!serialize(ctx.get(), blk.get(), &a, error) || !serialize(zctx.get(), blk.get(), &za, error)) return false;
    e.archive_bytes = a.size();
    e.archive_xxh3 = xxh3(a.data(), a.size());
    e.zarchive_bytes = za.size();
    e.zarchive_xxh3 = xxh3(za.data(), za.size());
    if (!decode(ctx.get(), blk.get(), NQ_DTYPE_F32, &e.decoded_f32_xxh3, error) ||
        !decode(ctx.get(), blk.get(), c.dtype, &e.decoded_native_xxh3, error))
        return false;

    // Both archive forms read back into the same resident bytes.
    for (const std::vector<uint8_t> *arch : {&a, &za}) {
        nq_block *back = nullptr;
        if (nq_block_deserialize(ctx.get(), arch->data(), arch->size(), &back) != NQ_OK)
            return fail(error, "nq_block_deserialize");
        Block bk(back);
        uint64_t dg = 0;
        nq_block_digest(bk.get(), &dg);
        if (dg != e.resident_xxh3) {
            *error = "an archive read back differs from the block written";
            return false;
        }
    }
    *out = e;
    if (stored) *stored = std::move(a);
    if (zstd) *zstd = std::move(za);
    return true;
}

unsigned zstd_version() { return ZSTD_versionNumber(); }

}  // namespace golden
