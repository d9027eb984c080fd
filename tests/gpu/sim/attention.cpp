// The CUDA backend source attention.cu compiled for the CPU stand-in (NQ_GPU_SIM).
#include "../../../backends/cuda/attention.cu"
