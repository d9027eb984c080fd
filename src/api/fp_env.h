// The IEEE default floating-point environment for a scope: round to nearest even, no
// flush-to-zero, no denormals-are-zero, exceptions masked. The caller's environment is
// restored on exit, so what the library computes never depends on the mode of the
// thread that calls it.
#pragma once
#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#include <xmmintrin.h>

namespace nq {

class DefaultFpEnv {
public:
    DefaultFpEnv() : saved_(_mm_getcsr()) {
        if (saved_ != kDefault) _mm_setcsr(kDefault);
    }
    ~DefaultFpEnv() {
        if (_mm_getcsr() != saved_) _mm_setcsr(saved_);
    }
    DefaultFpEnv(const DefaultFpEnv &) = delete;
    DefaultFpEnv &operator=(const DefaultFpEnv &) = delete;

private:
    static constexpr unsigned kDefault = 0x1f80;  // all exceptions masked, nearest, no FTZ/DAZ
    unsigned saved_;
};

}  // namespace nq
#else
#include <cfenv>

namespace nq {

class DefaultFpEnv {
public:
    DefaultFpEnv() {
        std::fegetenv(&saved_);
        std::fesetenv(FE_DFL_ENV);
    }
    ~DefaultFpEnv() { std::fesetenv(&saved_); }
    DefaultFpEnv(const DefaultFpEnv &) = delete;
    DefaultFpEnv &operator=(const DefaultFpEnv &) = delete;

private:
    std::fenv_t saved_;
};

}  // namespace nq
#endif
