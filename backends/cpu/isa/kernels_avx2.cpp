// The CPU pipeline for AVX2 (+F16C): 8 tokens per tile. The build compiles this file
// with -mavx2 -mf16c (CMakeLists.txt); it only runs after cpu_isa_detected() has seen
// the CPU and OS support. Compiled without those flags it provides no kernels.
#include <cstdint>
#include <cstring>

#include "kernels.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__F16C__)
#define NQ_KERNELS_AVX2 1
#include "simd_avx2.h"
#include "kernels_impl.inc"
#endif

namespace nq {

#if defined(NQ_KERNELS_AVX2)
namespace {
constexpr CpuKernels kKernels{"avx2", NQ_ISA_AVX2, Simd::W, encode_tile, decode_tile, key_sum,
                              rope_tables_tile, row_to_f16, f16_to_row};
}  // namespace

const CpuKernels *cpu_kernels_avx2() { return &kKernels; }
#else
const CpuKernels *cpu_kernels_avx2() { return nullptr; }
#endif

}  // namespace nq
