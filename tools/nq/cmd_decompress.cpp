// nq decompress: an nq container file -> K/V (and positions) .npy files.
#include <cstdio>
#include <map>

#include "commands.h"
#include "container.h"
#include "json_writer.h"
#include "npy.h"
#include "pipeline.h"

namespace nqcli {
namespace {

std::vector<OptSpec> specs() { return {{"k", true}, {"v", true}, {"positions", true}, {"dtype", true}}; }

int run(const Args &a) {
    a.require({"k", "v"});
    if (a.positional().size() != 1) throw CliError("give exactly one container FILE");
    const std::string path = a.positional()[0];
    const nq_dtype dtype = a.has("dtype") ? nq_dtype_from_name(a.str("dtype"), "--dtype") : NQ_DTYPE_F16;
    Container c = container_read(path);
    if (c.entries.empty()) throw CliError(path + ": the container holds no blocks");

    std::vector<BlockPtr> blocks;
    std::vector<nq_block_info> infos;
    std::map<std::pair<uint32_t, uint32_t>, ContextPtr> contexts;  // by (head_dim, heads)
    nq_context *ctx = nullptr;
    for (size_t i = 0; i < c.entries.size(); ++i) {
        const uint8_t *p = c.bytes.data() + c.entries[i].offset;
        const size_t len = (size_t)c.entries[i].length;
        ArchivePeek pk = peek_archive(p, len);
        if (!pk.ok) throw CliError(strf("block %zu: not a nexusquant archive", i), "NQ_ERR_VERSION");
        auto key = std::make_pair(pk.head_dim, pk.heads);
        if (!contexts.count(key)) contexts[key] = reader_context(pk.head_dim, pk.heads);
        ctx = contexts[key].get();
        nq_block *b = nullptr;
        check(nq_block_deserialize(ctx, p, len, &b), strf("block %zu", i));
        blocks.emplace_back(b);
        infos.push_back(block_info(b));
    }
    const nq_block_info &f = infos[0];
    for (size_t i = 1; i < infos.size(); ++i)
        if (infos[i].num_heads != f.num_heads || infos[i].head_dim != f.head_dim ||
            infos[i].tokens_kept != f.tokens_kept)
            throw CliError(strf("block %zu has %u heads x %u kept tokens x dim %u, block 0 %u x %u x %u: they do not "
                                "stack into one array",
                                i, infos[i].num_heads, infos[i].tokens_kept, infos[i].head_dim, f.num_heads,
                                f.tokens_kept, f.head_dim));
    const uint32_t L = (uint32_t)blocks.size(), H = f.num_heads, K = f.tokens_kept, D = f.head_dim;
    const size_t es = dtype == NQ_DTYPE_F32 ? 4 : 2;
    const size_t layer_elems = (size_t)H * K * D;
    std::vector<uint8_t> kout(L * layer_elems * es), vout(L * layer_elems * es);
    std::vector<int64_t> pos((size_t)L * H * K);
    double seconds = 0.0;
    for (uint32_t l = 0; l < L; ++l) {
        nq_kv_desc out;
        nq_kv_desc_init(&out);
        out.dtype = dtype;
        out.num_tokens = K;
        out.k = kout.data() + l * layer_elems * es;
        out.v = vout.data() + l * layer_elems * es;
        nq_layout_contiguous(&out.k_layout, K, D);
        out.v_layout = out.k_layout;
        ContextPtr &cx = contexts[std::make_pair(D, H)];
        double t0 = now_seconds();
        check(nq_decode(cx.get(), blocks[l].get(), 0, K, &out, nullptr), strf("decoding block %u", l));
        seconds += now_seconds() - t0;
        for (uint32_t h = 0; h < H; ++h)
            check(nq_block_positions(blocks[l].get(), h, 0, K, pos.data() + ((size_t)l * H + h) * K),
                  "nq_block_positions");
    }
    const NpyType t = dtype == NQ_DTYPE_F16 ? NpyType::F16 : dtype == NQ_DTYPE_BF16 ? NpyType::BF16 : NpyType::F32;
    const std::vector<uint64_t> shape = {L, H, K, D};
    npy_write(a.str("k"), t, shape, kout.data());
    npy_write(a.str("v"), t, shape, vout.data());
    if (a.has("positions")) npy_write(a.str("positions"), NpyType::I64, {L, H, K}, pos.data());
    const uint64_t decoded_fp16 = 4ull * L * H * K * D;

    if (a.has("json")) {
        JsonWriter j;
        j.begin_object().str("input", path).u64("file_bytes", c.bytes.size()).u64("blocks", L);
        j.str("k", a.str("k")).str("v", a.str("v"));
        if (a.has("positions")) j.str("positions", a.str("positions"));
        j.begin_array("shape");
        for (uint64_t d : shape) j.u64(nullptr, d);
        j.end_array().str("dtype", nq_dtype_label(dtype)).u64("tokens_in", f.tokens_in).u64("tokens_kept", K);
        j.num("decode_seconds", seconds).num("decode_gbps", seconds > 0 ? decoded_fp16 / seconds / 1e9 : 0.0);
        j.end_object();
        std::fputs(j.text().c_str(), stdout);
        return 0;
    }
    std::printf("%s: %u blocks -> %s, %s%s%s: shape %s %s (%u of %u tokens kept per head)\n", path.c_str(), L,
                a.str("k").c_str(), a.str("v").c_str(), a.has("positions") ? ", " : "",
                a.has("positions") ? a.str("positions").c_str() : "", shape_string(shape).c_str(),
                nq_dtype_label(dtype), K, f.tokens_in);
    std::printf("  decode %.3f s, %.3f GB/s of fp16 K+V\n", seconds, seconds > 0 ? decoded_fp16 / seconds / 1e9 : 0.0);
    return 0;
}

}  // namespace

const Command kDecompressCommand = {
    "decompress", "decode an nq container file into K/V .npy files",
    "usage: nq decompress FILE --k K.npy --v V.npy [--positions P.npy] [--dtype f16|bf16|f32]\n\n"
    "Decodes every block (keys come back with RoPE re-applied when it was removed) into\n"
    "[layers, kv_heads, kept_tokens, head_dim] arrays; --positions writes the original\n"
    "position of every row, int64 [layers, kv_heads, kept_tokens] (with per-head eviction\n"
    "each head keeps different tokens). bf16 is written as raw '<V2' (view it with\n"
    "ml_dtypes.bfloat16).\n\n"
    "  --dtype T   f16 (default), bf16 or f32\n"
    "  --json      one JSON object describing what was written\n",
    specs, run};

}  // namespace nqcli
