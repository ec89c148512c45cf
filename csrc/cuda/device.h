// device.h: the C interface of the CUDA module's device code (host compiler side).
#pragma once

extern "C" {
// Number of visible CUDA devices, or -1 with a message in error (e.g. no driver, no device).
int rnnfast_cuda_device_count(char* error, int error_len);
// CUDA runtime version the module was linked with (e.g. 13000), or -1.
int rnnfast_cuda_runtime_version();
}
