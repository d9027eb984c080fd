// Choosing the CPU backend's instruction set once per context, and the floating-point
// environment every CPU computation runs under.
#pragma once
#include <cstdint>

#include "isa/kernels.h"
#include "nexusquant.h"

namespace nq {

// The best instruction set this CPU *and* this OS support: CPUID says the CPU has the
// instructions, XGETBV says the OS saves the vector state they use (YMM for AVX2; opmask,
// ZMM_Hi256 and Hi16_ZMM for AVX-512). Computed once.
//   avx2:   AVX, AVX2, F16C
//   avx512: the above and AVX-512 F, BW, DQ, VL
nq_cpu_isa cpu_isa_detected();

// The instruction set a context runs: the detected one, capped by `config_cap` (AUTO = no
// cap) and by the environment variable NQ_CPU_ISA (`env`, "scalar" | "avx2" | "avx512",
// NULL or anything else = no cap). A cap above what the CPU has means the best it has.
nq_cpu_isa cpu_isa_resolve(nq_cpu_isa config_cap, const char *env);

// The rule behind cpu_isa_resolve for a given best instruction set (tests drive it with
// every combination).
nq_cpu_isa cpu_isa_capped(nq_cpu_isa best, nq_cpu_isa config_cap, const char *env);

// The kernels of an instruction set; NULL for NQ_ISA_SCALAR (the reference loops run)
// and for an ISA this build or CPU does not have.
const CpuKernels *cpu_kernels(nq_cpu_isa isa);

// Installs the IEEE default floating-point environment for a scope (round to nearest
// even, no flush-to-zero, no denormals-are-zero, exceptions masked) and restores the
// caller's on exit: results never depend on the MXCSR of the thread that calls.
class FpEnvGuard {
  public:
    FpEnvGuard();
    ~FpEnvGuard();
    FpEnvGuard(const FpEnvGuard &) = delete;
    FpEnvGuard &operator=(const FpEnvGuard &) = delete;

  private:
    uint32_t saved_;
};

}  // namespace nq
