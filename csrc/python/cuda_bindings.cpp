// cuda_bindings.cpp: rnnfast._cuda (the kernels on a GPU) and rnnfast._cuda_emu (the same kernel sources run
// on the host by compat.cuh's emulation). Bindings only.
//
// Arrays arrive as raw addresses (CuPy's data.ptr, or NumPy's ctypes.data for the emulation) with the sizes;
// rnnfast/functional.py checks every shape, dtype, device and contiguity before it calls these, and the
// launchers check every CUDA status. Kernels run with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "../cuda/launch.h"
#if !defined(RNNFAST_CUDA_EMU)
#include "../cuda/device.h"
#define RNNFAST_CUDA_MODULE _cuda
#else
#define RNNFAST_CUDA_MODULE _cuda_emu
#endif

namespace py = pybind11;

namespace {

int cell_id(const std::string& cell) {
    if (cell == "rnn_tanh") return rnnfast_cuda::kRnnTanh;
    if (cell == "rnn_relu") return rnnfast_cuda::kRnnRelu;
    if (cell == "lstm") return rnnfast_cuda::kLstm;
    if (cell == "gru") return rnnfast_cuda::kGru;
    if (cell == "gru_original") return rnnfast_cuda::kGruOriginal;
    throw py::value_error("cell: expected 'rnn_tanh', 'rnn_relu', 'lstm', 'gru' or 'gru_original', got '" + cell + "'");
}
int gates_of(int cell) { return cell == rnnfast_cuda::kLstm ? 4 : cell >= rnnfast_cuda::kGru ? 3 : 1; }

template <typename T>
T* ptr(std::uintptr_t address) { return reinterpret_cast<T*>(address); }

rnnfast_cuda::Request request(const py::array_t<int64_t, py::array::c_style>& steps, int T, int path, int units,
                              int threads) {
    if (steps.ndim() != 1 || steps.shape(0) != 2 * static_cast<py::ssize_t>(T))
        throw py::value_error("steps: expected 2*T int64 values (batch sizes, then offsets)");
    if (path < 0 || path > 2) throw py::value_error("path: expected 0 (auto), 1 (persistent) or 2 (per-step)");
    if (threads < 32 || threads % 32 || threads > 1024) throw py::value_error("threads: a multiple of 32 up to 1024");
    if (units < 0) throw py::value_error("units_per_block: expected >= 0");
    rnnfast_cuda::Request q;
    q.path = path;
    q.units_per_block = units;
    q.threads = threads;
    q.steps = steps.data();
    return q;
}

}  // namespace

PYBIND11_MODULE(RNNFAST_CUDA_MODULE, m) {
#if defined(RNNFAST_CUDA_EMU)
    m.doc() = "rnnfast's CUDA kernels compiled for the host (emulated launches), for tests without a GPU.";
    m.attr("emulated") = true;
#else
    m.doc() = "rnnfast's CUDA kernels.";
    m.attr("emulated") = false;
    m.def("device_count", [] {
        char err[256] = {0};
        const int n = rnnfast_cuda_device_count(err, sizeof err);
        if (n < 0) throw std::runtime_error(std::string("CUDA: ") + err);
        return n;
    }, "Number of CUDA devices; raises RuntimeError naming the CUDA error when none can be queried.");
    m.def("runtime_version", &rnnfast_cuda_runtime_version);
#endif

    m.def("forward",
          [](const std::string& cell, int T, int B, int H, const py::array_t<int64_t, py::array::c_style>& steps,
             std::uintptr_t xp, std::uintptr_t h0, std::uintptr_t c0, std::uintptr_t w, std::uintptr_t b_ih,
             std::uintptr_t b_hh, std::uintptr_t y, std::uintptr_t h_n, std::uintptr_t c, std::uintptr_t ws,
             std::uintptr_t stream, int path, int units_per_block, int threads, int P, std::uintptr_t w_hr,
             std::uintptr_t scratch) {
              rnnfast_cuda::FwdParams p{};
              p.P = P; p.w_hr = ptr<const float>(w_hr); p.scratch = ptr<float>(scratch);
              p.cell = cell_id(cell);
              p.G = gates_of(p.cell);
              p.T = T; p.B = B; p.H = H;
              p.xp = ptr<const float>(xp); p.h0 = ptr<const float>(h0); p.c0 = ptr<const float>(c0);
              p.w = ptr<const float>(w); p.b_ih = ptr<const float>(b_ih); p.b_hh = ptr<const float>(b_hh);
              p.y = ptr<float>(y); p.h_n = ptr<float>(h_n); p.c = ptr<float>(c); p.ws = ptr<float>(ws);
              const rnnfast_cuda::Request q = request(steps, T, path, units_per_block, threads);
              int used = 0;
              std::string err;
              {
                  py::gil_scoped_release nogil;
                  err = rnnfast_cuda::forward(q, p, reinterpret_cast<void*>(stream), &used);
              }
              if (!err.empty()) throw std::runtime_error("CUDA forward: " + err);
              return used;
          },
          py::arg("cell"), py::arg("T"), py::arg("B"), py::arg("H"), py::arg("steps"), py::arg("xp"), py::arg("h0"),
          py::arg("c0"), py::arg("w"), py::arg("b_ih"), py::arg("b_hh"), py::arg("y"), py::arg("h_n"), py::arg("c"),
          py::arg("ws"), py::arg("stream") = 0, py::arg("path") = 0, py::arg("units_per_block") = 0,
          py::arg("threads") = 128, py::arg("P") = 0, py::arg("w_hr") = 0, py::arg("scratch") = 0,
          "All steps of the recurrence; returns the path taken (1 persistent, 2 per-step).");

    m.def("backward",
          [](const std::string& cell, int T, int B, int H, const py::array_t<int64_t, py::array::c_style>& steps,
             std::uintptr_t w, std::uintptr_t h0, std::uintptr_t c0, std::uintptr_t y, std::uintptr_t ws,
             std::uintptr_t dy, std::uintptr_t dh, std::uintptr_t dc, std::uintptr_t dxg, std::uintptr_t dhg,
             std::uintptr_t stream, int path, int units_per_block, int threads, int P, std::uintptr_t w_hr,
             std::uintptr_t dh_all) {
              rnnfast_cuda::BwdParams p{};
              p.P = P; p.w_hr = ptr<const float>(w_hr); p.dh_all = ptr<float>(dh_all);
              p.cell = cell_id(cell);
              p.G = gates_of(p.cell);
              p.T = T; p.B = B; p.H = H;
              p.w = ptr<const float>(w); p.h0 = ptr<const float>(h0); p.c0 = ptr<const float>(c0);
              p.y = ptr<const float>(y); p.ws = ptr<const float>(ws); p.dy = ptr<const float>(dy);
              p.dh = ptr<float>(dh); p.dc = ptr<float>(dc); p.dxg = ptr<float>(dxg); p.dhg = ptr<float>(dhg);
              const rnnfast_cuda::Request q = request(steps, T, path, units_per_block, threads);
              int used = 0;
              std::string err;
              {
                  py::gil_scoped_release nogil;
                  err = rnnfast_cuda::backward(q, p, reinterpret_cast<void*>(stream), &used);
              }
              if (!err.empty()) throw std::runtime_error("CUDA backward: " + err);
              return used;
          },
          py::arg("cell"), py::arg("T"), py::arg("B"), py::arg("H"), py::arg("steps"), py::arg("w"), py::arg("h0"),
          py::arg("c0"), py::arg("y"), py::arg("ws"), py::arg("dy"), py::arg("dh"), py::arg("dc"), py::arg("dxg"),
          py::arg("dhg"), py::arg("stream") = 0, py::arg("path") = 0, py::arg("units_per_block") = 0,
          py::arg("threads") = 128, py::arg("P") = 0, py::arg("w_hr") = 0, py::arg("dh_all") = 0,
          "BPTT: dh (in: dh_n, out: dh0), dc likewise; writes dxg (and dhg for GRU). Returns the path taken.");
}
