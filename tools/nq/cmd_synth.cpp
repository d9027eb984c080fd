// nq synth: writes deterministic synthetic K/V as .npy files (test data for the other
// commands, without numpy).
#include <cstdio>

#include "commands.h"
#include "help_text.h"
#include "json_writer.h"
#include "kv_input.h"

namespace nqcli {
namespace {

std::vector<OptSpec> specs() { return kv_input_specs(true); }

int run(const Args &a) {
    a.require({"k", "v"});
    if (a.has("positions")) throw CliError("nq synth writes no positions (they are 0..tokens-1)");
    if (!a.has("synthetic")) throw CliError("nq synth needs --synthetic gaussian|outlier");
    KvData kv = make_synthetic(a);
    NpyType t = kv.dtype == NQ_DTYPE_F16 ? NpyType::F16 : kv.dtype == NQ_DTYPE_BF16 ? NpyType::BF16 : NpyType::F32;
    std::vector<uint64_t> shape = {kv.layers, kv.heads, kv.tokens, kv.head_dim};
    npy_write(a.str("k"), t, shape, kv.k.data());
    npy_write(a.str("v"), t, shape, kv.v.data());
    if (a.has("json")) {
        JsonWriter j;
        j.begin_object().str("source", kv.source).str("k", a.str("k")).str("v", a.str("v"));
        j.begin_array("shape");
        for (uint64_t d : shape) j.u64(nullptr, d);
        j.end_array().str("dtype", nq_dtype_label(kv.dtype)).u64("fp16_bytes", kv.fp16_bytes()).end_object();
        std::fputs(j.text().c_str(), stdout);
    } else {
        std::printf("wrote %s and %s: %s, shape %s, %s\n", a.str("k").c_str(), a.str("v").c_str(), kv.source.c_str(),
                    shape_string(shape).c_str(), nq_dtype_label(kv.dtype));
    }
    return 0;
}

}  // namespace

const Command kSynthCommand = {
    "synth", "write synthetic K/V .npy files (gaussian or LLM-like outliers)",
    "usage: nq synth --synthetic gaussian|outlier --k K.npy --v V.npy [--layers L] [--kv-heads H]\n"
    "                [--tokens T] [--head-dim D] [--seed S] [--dtype f16|bf16|f32]\n\n"
    "Writes [layers, kv_heads, tokens, head_dim] arrays. The generator is splitmix64 with\n"
    "Box-Muller: the same seed gives the same data. bf16 is written as raw '<V2' (read it\n"
    "back with --dtype bf16, or view it with ml_dtypes.bfloat16).\n\n" NQ_HELP_SYNTHETIC,
    specs, run};

}  // namespace nqcli
