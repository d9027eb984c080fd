// The CPU pipeline for AVX-512 (F, BW, DQ, VL): 16 tokens per tile. The build compiles
// this file with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mf16c (CMakeLists.txt); it
// only runs after cpu_isa_detected() has seen the CPU and OS support. Compiled without
// those flags (another target, another architecture) it provides no kernels and the
// dispatcher falls back to AVX2 or the reference.
#include <cstdint>
#include <cstring>

#include "kernels.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__) && defined(__F16C__)
#define NQ_KERNELS_AVX512 1
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsics headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "simd_avx512.h"
#include "kernels_impl.inc"
#endif

namespace nq {

#if defined(NQ_KERNELS_AVX512)
namespace {
constexpr CpuKernels kKernels{"avx512", NQ_ISA_AVX512, Simd::W, encode_tile, decode_tile, key_sum,
                              rope_tables_tile, row_to_f16, f16_to_row};
}  // namespace

const CpuKernels *cpu_kernels_avx512() { return &kKernels; }
#else
const CpuKernels *cpu_kernels_avx512() { return nullptr; }
#endif

}  // namespace nq
