// The attention kernels of an instruction set (cpu_attention.cpp).
#pragma once
#include <cstdint>

#include "isa/attention_kernels.h"
#include "nexusquant.h"

struct nq_context;

namespace nq {

// NULL for NQ_ISA_SCALAR and for ISAs this build or CPU lacks.
const AttnKernels *attn_kernels(nq_cpu_isa isa);

}  // namespace nq
