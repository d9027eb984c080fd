// The CUDA backend source registry.cu compiled for the CPU stand-in (NQ_GPU_SIM).
#include "../../../backends/cuda/registry.cu"
