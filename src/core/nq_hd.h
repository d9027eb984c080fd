// Marks functions that the CPU reference and the GPU backends share, so one source
// defines the arithmetic that decides every stored bit.
#pragma once
#if defined(__CUDACC__) || defined(__HIPCC__)
#define NQ_HD __host__ __device__ __forceinline__
#else
#define NQ_HD inline
#endif
