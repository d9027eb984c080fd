// The CUDA backend source select.cu compiled for the CPU stand-in (NQ_GPU_SIM).
#include "../../../backends/cuda/select.cu"
