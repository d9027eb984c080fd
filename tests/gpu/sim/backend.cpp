// The CUDA backend source backend.cu compiled for the CPU stand-in (NQ_GPU_SIM).
#include "../../../backends/cuda/backend.cu"
