// The CUDA backend source decode.cu compiled for the CPU stand-in (NQ_GPU_SIM).
#include "../../../backends/cuda/decode.cu"
