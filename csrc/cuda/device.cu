// device.cu: device discovery for _rnnfast._cuda, every status checked (the recurrence kernels are in
// launch.cu and the .cuh files it includes).
#include <cuda_runtime.h>

#include <cstdio>

#include "device.h"

extern "C" int rnnfast_cuda_device_count(char* error, int error_len) {
    int n = 0;
    const cudaError_t st = cudaGetDeviceCount(&n);
    if (st != cudaSuccess) {
        std::snprintf(error, static_cast<size_t>(error_len), "%s: %s", cudaGetErrorName(st), cudaGetErrorString(st));
        return -1;
    }
    return n;
}

extern "C" int rnnfast_cuda_runtime_version() {
    int v = 0;
    return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : -1;
}
