// cuda_bindings.cpp: the rnnfast._cuda module. Bindings only.
#include <pybind11/pybind11.h>

#include <string>

#include "../cuda/device.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "rnnfast CUDA module (device discovery; kernels come with the CUDA backend).";
    m.def("device_count", [] {
        char err[256] = {0};
        const int n = rnnfast_cuda_device_count(err, sizeof err);
        if (n < 0) throw std::runtime_error(std::string("CUDA: ") + err);
        return n;
    }, "Number of CUDA devices; raises RuntimeError naming the CUDA error when none can be queried.");
    m.def("runtime_version", &rnnfast_cuda_runtime_version);
}
