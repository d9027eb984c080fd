// The CUDA backend source encode.cu compiled for the CPU stand-in (NQ_GPU_SIM).
#include "../../../backends/cuda/encode.cu"
