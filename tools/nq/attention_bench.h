// nq bench --attention (attention_bench.cpp).
#pragma once
#include <vector>

#include "cli.h"
#include "pipeline.h"

namespace nqcli {

// --attention, --batch, --q-heads (the shape's other flags come from the input specs).
std::vector<OptSpec> attention_bench_specs();
int run_attention_bench(const Args &args, const PipelineOptions &opt, uint32_t repeat, double min_seconds);

}  // namespace nqcli
