#include "cpu_dispatch.h"

#include <cctype>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <xmmintrin.h>
#define NQ_X86 1
#endif

namespace nq {

namespace {

#if defined(NQ_X86)
uint64_t xgetbv0() {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

nq_cpu_isa detect() {
    uint32_t a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return NQ_ISA_SCALAR;
    const bool osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
    if (!osxsave || !avx || !f16c) return NQ_ISA_SCALAR;
    const uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return NQ_ISA_SCALAR;  // XMM and YMM state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return NQ_ISA_SCALAR;
    if (!(b & (1u << 5))) return NQ_ISA_SCALAR;  // AVX2
    const uint32_t avx512 = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);  // F, DQ, BW, VL
    if ((b & avx512) == avx512 && (xcr0 & 0xe0) == 0xe0) return NQ_ISA_AVX512;
    return NQ_ISA_AVX2;
}
#else
nq_cpu_isa detect() { return NQ_ISA_SCALAR; }
#endif

bool same(const char *a, const char *b) {
    for (; *a && *b; ++a, ++b)
        if (std::tolower((unsigned char)*a) != std::tolower((unsigned char)*b)) return false;
    return *a == *b;
}

}  // namespace

nq_cpu_isa cpu_isa_detected() {
    static const nq_cpu_isa isa = [] {
        nq_cpu_isa best = detect();
        // Kernel files compiled without their ISA flags provide no kernels.
        if (best == NQ_ISA_AVX512 && !cpu_kernels_avx512()) best = NQ_ISA_AVX2;
        if (best == NQ_ISA_AVX2 && !cpu_kernels_avx2()) best = NQ_ISA_SCALAR;
        return best;
    }();
    return isa;
}

nq_cpu_isa cpu_isa_resolve(nq_cpu_isa config_cap, const char *env) {
    return cpu_isa_capped(cpu_isa_detected(), config_cap, env);
}

nq_cpu_isa cpu_isa_capped(nq_cpu_isa best, nq_cpu_isa config_cap, const char *env) {
    nq_cpu_isa isa = best;
    if (config_cap != NQ_ISA_AUTO && config_cap < isa) isa = config_cap;
    if (env) {
        nq_cpu_isa cap = NQ_ISA_AUTO;
        if (same(env, "scalar")) cap = NQ_ISA_SCALAR;
        else if (same(env, "avx2")) cap = NQ_ISA_AVX2;
        else if (same(env, "avx512")) cap = NQ_ISA_AVX512;
        if (cap != NQ_ISA_AUTO && cap < isa) isa = cap;
    }
    return isa;
}

const CpuKernels *cpu_kernels(nq_cpu_isa isa) {
    switch (isa) {
    case NQ_ISA_AVX512: return cpu_kernels_avx512();
    case NQ_ISA_AVX2: return cpu_kernels_avx2();
    default: return nullptr;
    }
}

#if defined(NQ_X86)
constexpr uint32_t kDefaultMxcsr = 0x1f80;  // all exceptions masked, round to nearest, no FTZ/DAZ

FpEnvGuard::FpEnvGuard() : saved_(_mm_getcsr()) {
    if (saved_ != kDefaultMxcsr) _mm_setcsr(kDefaultMxcsr);
}

FpEnvGuard::~FpEnvGuard() {
    if (_mm_getcsr() != saved_) _mm_setcsr(saved_);
}
#else
FpEnvGuard::FpEnvGuard() : saved_(0) {}
FpEnvGuard::~FpEnvGuard() {}
#endif

}  // namespace nq
