// The K/V a subcommand works on: two .npy files, or synthetic data, held as
// [layers][heads][tokens][head_dim] elements of one dtype, plus optional positions.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "cli.h"
#include "nexusquant.h"
#include "npy.h"

namespace nqcli {

struct KvData {
    uint32_t layers = 0, heads = 0, tokens = 0, head_dim = 0;
    nq_dtype dtype = NQ_DTYPE_F16;
    std::vector<uint8_t> k, v;          // elements of dtype, C order
    std::vector<int64_t> positions;     // empty: 0..tokens-1; else [tokens] or [layers][tokens]
    bool positions_per_layer = false;
    std::string source;                 // for messages and reports

    size_t elem_bytes() const;
    size_t layer_elems() const { return (size_t)heads * tokens * head_dim; }
    const void *k_layer(uint32_t l) const { return k.data() + l * layer_elems() * elem_bytes(); }
    const void *v_layer(uint32_t l) const { return v.data() + l * layer_elems() * elem_bytes(); }
    // Positions of layer l's tokens, or nullptr for 0..tokens-1.
    const int64_t *layer_positions(uint32_t l) const;
    // Input token index of an original position in layer l (-1 if none).
    int64_t token_of_position(uint32_t l, int64_t position) const;
    // One head vector as floats.
    void load_row(bool value, uint32_t l, uint32_t h, uint32_t t, float *dst) const;
    // fp16 bytes of K and V: the reference every ratio is measured against.
    uint64_t fp16_bytes() const { return 4ull * layers * heads * tokens * head_dim; }
};

nq_dtype nq_dtype_from_name(const std::string &name, const std::string &what);  // f16 | bf16 | f32
const char *nq_dtype_label(nq_dtype t);

// Options that choose the input: --k --v [--positions] [--dtype], or --synthetic KIND
// --layers --kv-heads --tokens --head-dim [--seed] [--dtype].
std::vector<OptSpec> kv_input_specs(bool allow_synthetic);
KvData load_kv(const Args &args, bool allow_synthetic);
// Synthetic data from --synthetic KIND --layers --kv-heads --tokens --head-dim --seed --dtype.
KvData make_synthetic(const Args &args);

// Elements of KvData from floats (rounded to dtype).
std::vector<uint8_t> floats_to_dtype(const std::vector<float> &src, nq_dtype dtype);

}  // namespace nqcli
