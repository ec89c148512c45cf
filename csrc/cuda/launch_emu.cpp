// launch_emu.cpp: the CUDA recurrence sources compiled for the host (compat.cuh's emulation), for
// _rnnfast._cuda_emu: CI runs the same kernels against the NumPy reference without a GPU.
#ifndef RNNFAST_CUDA_EMU
#define RNNFAST_CUDA_EMU 1
#endif
#include "launch.cu"
