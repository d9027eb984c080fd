#include "kv_input.h"

#include <algorithm>
#include <cstring>

#include "core/half.h"
#include "synthetic.h"

namespace nqcli {

size_t KvData::elem_bytes() const { return dtype == NQ_DTYPE_F32 ? 4 : 2; }

const int64_t *KvData::layer_positions(uint32_t l) const {
    if (positions.empty()) return nullptr;
    return positions.data() + (positions_per_layer ? (size_t)l * tokens : 0);
}

int64_t KvData::token_of_position(uint32_t l, int64_t position) const {
    const int64_t *p = layer_positions(l);
    if (!p) return position >= 0 && position < (int64_t)tokens ? position : -1;
    const int64_t *it = std::lower_bound(p, p + tokens, position);
    return it != p + tokens && *it == position ? it - p : -1;
}

void KvData::load_row(bool value, uint32_t l, uint32_t h, uint32_t t, float *dst) const {
    const size_t idx = (((size_t)l * heads + h) * tokens + t) * head_dim;
    const uint8_t *base = (value ? v.data() : k.data()) + idx * elem_bytes();
    for (uint32_t d = 0; d < head_dim; ++d) {
        if (dtype == NQ_DTYPE_F32) {
            std::memcpy(&dst[d], base + 4 * d, 4);
        } else {
            uint16_t u;
            std::memcpy(&u, base + 2 * d, 2);
            dst[d] = dtype == NQ_DTYPE_F16 ? nq::f16_to_f32(u) : nq::bf16_to_f32(u);
        }
    }
}

nq_dtype nq_dtype_from_name(const std::string &name, const std::string &what) {
    if (name == "f16" || name == "fp16" || name == "float16") return NQ_DTYPE_F16;
    if (name == "bf16" || name == "bfloat16") return NQ_DTYPE_BF16;
    if (name == "f32" || name == "fp32" || name == "float32") return NQ_DTYPE_F32;
    throw CliError(what + " '" + name + "': must be f16, bf16 or f32");
}

const char *nq_dtype_label(nq_dtype t) {
    switch (t) {
    case NQ_DTYPE_F16: return "f16";
    case NQ_DTYPE_BF16: return "bf16";
    case NQ_DTYPE_F32: return "f32";
    }
    return "?";
}

std::vector<uint8_t> floats_to_dtype(const std::vector<float> &src, nq_dtype dtype) {
    const size_t es = dtype == NQ_DTYPE_F32 ? 4 : 2;
    std::vector<uint8_t> out(src.size() * es);
    for (size_t i = 0; i < src.size(); ++i) {
        if (dtype == NQ_DTYPE_F32) {
            std::memcpy(&out[4 * i], &src[i], 4);
        } else {
            uint16_t u = dtype == NQ_DTYPE_F16 ? nq::f32_to_f16(src[i]) : nq::f32_to_bf16(src[i]);
            std::memcpy(&out[2 * i], &u, 2);
        }
    }
    return out;
}

std::vector<OptSpec> kv_input_specs(bool allow_synthetic) {
    std::vector<OptSpec> s = {{"k", true}, {"v", true}, {"positions", true}, {"dtype", true}};
    if (allow_synthetic) {
        for (const char *n : {"synthetic", "layers", "kv-heads", "tokens", "head-dim", "seed"}) s.push_back({n, true});
    }
    return s;
}

namespace {

nq_dtype dtype_of(NpyType t, const std::string &what) {
    switch (t) {
    case NpyType::F16: return NQ_DTYPE_F16;
    case NpyType::BF16: return NQ_DTYPE_BF16;
    case NpyType::F32: return NQ_DTYPE_F32;
    default: throw CliError(what + ": K/V must be float16, bfloat16 or float32, not " + npy_type_name(t));
    }
}

void read_positions(KvData &kv, const std::string &path) {
    NpyArray p = npy_read(path, false);
    if (p.type != NpyType::I64 && p.type != NpyType::I32)
        throw CliError(path + ": positions must be int64 or int32, not " + std::string(npy_type_name(p.type)));
    bool shared = p.shape.size() == 1 && p.shape[0] == kv.tokens;
    bool per_layer = p.shape.size() == 2 && p.shape[0] == kv.layers && p.shape[1] == kv.tokens;
    if (!shared && !per_layer)
        throw CliError(strf("%s: positions have shape %s: need (%u,) or (%u, %u) (tokens, or layers x tokens)",
                            path.c_str(), shape_string(p.shape).c_str(), kv.tokens, kv.layers, kv.tokens));
    kv.positions.resize(p.count());
    for (size_t i = 0; i < kv.positions.size(); ++i) {
        if (p.type == NpyType::I64) {
            std::memcpy(&kv.positions[i], &p.data[8 * i], 8);
        } else {
            int32_t x;
            std::memcpy(&x, &p.data[4 * i], 4);
            kv.positions[i] = x;
        }
    }
    kv.positions_per_layer = per_layer;
    // The library checks them too; this names the file and the index.
    const size_t rows = per_layer ? kv.layers : 1;
    for (size_t r = 0; r < rows; ++r)
        for (size_t t = 0; t < kv.tokens; ++t) {
            int64_t x = kv.positions[r * kv.tokens + t];
            if (x < 0 || x > 0xffffffffll) throw CliError(strf("%s: position %lld at index %zu is outside [0, 2^32)",
                                                               path.c_str(), (long long)x, r * kv.tokens + t));
            if (t && x <= kv.positions[r * kv.tokens + t - 1])
                throw CliError(strf("%s: positions must be strictly increasing (index %zu)", path.c_str(),
                                    r * kv.tokens + t));
        }
}

KvData load_npy_pair(const Args &args) {
    const std::string kp = args.str("k"), vp = args.str("v");
    const bool bf16_hint = args.has("dtype") && nq_dtype_from_name(args.str("dtype"), "--dtype") == NQ_DTYPE_BF16;
    if (args.has("dtype") && !bf16_hint)
        throw CliError("--dtype with .npy input only says that raw 2-byte ('V2') data is bf16; f16/f32 are read from "
                       "the file's descr");
    NpyArray ka = npy_read(kp, bf16_hint);
    NpyArray va = npy_read(vp, bf16_hint);
    if (ka.shape != va.shape)
        throw CliError("K " + shape_string(ka.shape) + " and V " + shape_string(va.shape) + " differ in shape");
    if (ka.type != va.type)
        throw CliError(std::string("K is ") + npy_type_name(ka.type) + " and V is " + npy_type_name(va.type) +
                       ": give both in one dtype");
    KvData kv;
    kv.dtype = dtype_of(ka.type, kp);
    const auto &s = ka.shape;
    if (s.size() == 4) {
        kv.layers = (uint32_t)s[0];
    } else if (s.size() == 3) {
        kv.layers = 1;
    } else {
        throw CliError(kp + ": shape " + shape_string(s) +
                       ": need [layers, kv_heads, tokens, head_dim] or [kv_heads, tokens, head_dim]");
    }
    const size_t o = s.size() - 3;
    for (uint64_t d : s)
        if (d == 0 || d > 0xffffffffull) throw CliError(kp + ": shape " + shape_string(s) + " has an empty or huge axis");
    kv.heads = (uint32_t)s[o];
    kv.tokens = (uint32_t)s[o + 1];
    kv.head_dim = (uint32_t)s[o + 2];
    kv.k = std::move(ka.data);
    kv.v = std::move(va.data);
    kv.source = kp + " + " + vp;
    if (args.has("positions")) read_positions(kv, args.str("positions"));
    return kv;
}

}  // namespace

KvData make_synthetic(const Args &args) {
    SynthSpec sp;
    sp.kind = synth_kind_from_name(args.str("synthetic", "gaussian"));
    sp.layers = (uint32_t)args.u64("layers", 1, 1, 4096);
    sp.heads = (uint32_t)args.u64("kv-heads", 8, 1, 4096);
    sp.tokens = (uint32_t)args.u64("tokens", 4096, 1, 0xffffffffull);
    sp.head_dim = (uint32_t)args.u64("head-dim", 128, 1, 4096);
    sp.seed = args.u64("seed", 1, 0, UINT64_MAX);
    const uint64_t elems = (uint64_t)sp.layers * sp.heads * sp.tokens * sp.head_dim;
    if (elems > ((uint64_t)1 << 34)) throw CliError("synthetic data of " + group_digits(elems) + " elements is too large");
    KvData kv;
    kv.layers = sp.layers;
    kv.heads = sp.heads;
    kv.tokens = sp.tokens;
    kv.head_dim = sp.head_dim;
    kv.dtype = args.has("dtype") ? nq_dtype_from_name(args.str("dtype"), "--dtype") : NQ_DTYPE_F16;
    std::vector<float> k, v;
    synth_generate(sp, k, v);
    kv.k = floats_to_dtype(k, kv.dtype);
    kv.v = floats_to_dtype(v, kv.dtype);
    kv.source = strf("synthetic %s seed %llu", synth_kind_name(sp.kind), (unsigned long long)sp.seed);
    return kv;
}

KvData load_kv(const Args &args, bool allow_synthetic) {
    if (allow_synthetic && args.has("synthetic")) {
        for (const char *n : {"k", "v", "positions"})
            if (args.has(n)) throw CliError(std::string("--") + n + " and --synthetic exclude each other");
        return make_synthetic(args);
    }
    if (!args.has("k") || !args.has("v"))
        throw CliError(allow_synthetic ? "give --k K.npy --v V.npy, or --synthetic gaussian|outlier"
                                       : "give --k K.npy and --v V.npy");
    for (const char *n : {"layers", "kv-heads", "tokens", "head-dim", "seed"})
        if (allow_synthetic && args.has(n))
            throw CliError(std::string("--") + n + " only applies to --synthetic data (the .npy shape says it)");
    return load_npy_pair(args);
}

}  // namespace nqcli
