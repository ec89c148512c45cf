// cuda_bindings.cpp: _rnnfast._cuda (the kernels on a GPU) and _rnnfast._cuda_emu (the same kernel sources run
// on the host by compat.cuh's emulation). Bindings only.
//
// A call is a named, keyword-only object (ForwardCall, BackwardCall) whose constructor checks every array
// against csrc/cuda/launch.h's shapes before anything launches, with messages that name the argument: CuPy
// arrays (__cuda_array_interface__) for _cuda, NumPy arrays (__array_interface__) for _cuda_emu; float32,
// C-contiguous, outputs writeable. The call keeps its arrays alive; kernels run with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../cuda/launch.h"
#if !defined(RNNFAST_CUDA_EMU)
#include "../cuda/device.h"
#define RNNFAST_CUDA_MODULE _cuda
static constexpr const char* kInterface = "__cuda_array_interface__";
static constexpr const char* kArrayKind = "a CuPy array";
#else
#define RNNFAST_CUDA_MODULE _cuda_emu
static constexpr const char* kInterface = "__array_interface__";
static constexpr const char* kArrayKind = "a NumPy array";
#endif

namespace py = pybind11;
using rnnfast_cuda::BwdParams;
using rnnfast_cuda::FwdParams;

namespace {

using Dims = std::vector<py::ssize_t>;

std::string dims_str(const Dims& d) {
    std::string s = "(";
    for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
    return s + (d.size() == 1 ? ",)" : ")");
}

// One array argument, read from its array interface; absent (None) arrays have no data.
struct Arg {
    std::string name;
    py::object obj;
    Dims shape;
    float* data = nullptr;
    bool present = false, readonly = false;

    // Checks the shape; `out`: the kernels write it.
    void expect(const Dims& want, bool out = false) const {
        if (shape != want)
            throw py::value_error(name + ": expected shape " + dims_str(want) + ", got " + dims_str(shape));
        if (out && readonly) throw py::value_error(name + ": read-only (the kernels write it)");
    }
    py::ssize_t dim(size_t i, const char* what) const {
        if (shape.size() != 2) throw py::value_error(name + ": expected a 2-D array " + what + ", got shape " + dims_str(shape));
        return shape[i];
    }
};

Arg arg(const char* name, const py::object& obj, bool required) {
    Arg a;
    a.name = name;
    a.obj = obj;
    if (obj.is_none()) {
        if (required) throw py::value_error(a.name + ": required");
        return a;
    }
    if (!py::hasattr(obj, kInterface))
        throw py::type_error(a.name + ": expected " + kArrayKind + ", got " +
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    const py::dict ai = obj.attr(kInterface);
    const std::string typestr = ai["typestr"].cast<std::string>();
    if (typestr != "<f4") throw py::type_error(a.name + ": expected float32, got " + typestr);
    for (const py::handle d : ai["shape"].cast<py::tuple>()) a.shape.push_back(d.cast<py::ssize_t>());
    const py::tuple data = ai["data"].cast<py::tuple>();
    a.data = reinterpret_cast<float*>(data[0].cast<std::uintptr_t>());
    a.readonly = data[1].cast<bool>();
    if (ai.contains("mask") && !ai["mask"].is_none()) throw py::type_error(a.name + ": masked arrays are not supported");
    if (ai.contains("strides") && !ai["strides"].is_none()) {  // None means C-contiguous
        const py::tuple strides = ai["strides"].cast<py::tuple>();
        py::ssize_t want = sizeof(float), total = 1;
        for (const py::ssize_t d : a.shape) total *= d;
        for (size_t i = a.shape.size(); i-- > 0;) {
            if (total && a.shape[i] > 1 && strides[i].cast<py::ssize_t>() != want)
                throw py::value_error(a.name + ": expected a C-contiguous array");
            want *= a.shape[i];
        }
    }
    if (reinterpret_cast<std::uintptr_t>(a.data) % alignof(float))
        throw py::value_error(a.name + ": expected a 4-byte aligned array");
    a.present = true;
    return a;
}

// The cell's id from torch's name, through cells.h's table (the only one).
rnnfast::CellId cell_id(const std::string& name) {
    std::string known;
    for (int c = 0; c < rnnfast::kNumCells; ++c) {
        if (name == rnnfast::cell_info(c).name) return static_cast<rnnfast::CellId>(c);
        known += std::string(c ? ", '" : "'") + rnnfast::cell_info(c).name + "'";
    }
    throw py::value_error("cell: expected one of " + known + ", got '" + name + "'");
}

// What every call shares: the cell, the steps, W_hh and W_hr, h0 and c0; sizes T, N, B, H, P, S and G.
struct Common {
    rnnfast::CellId cell;
    std::vector<int64_t> batch_sizes;
    int T = 0, B = 0, H = 0, P = 0, S = 0, G = 0, slots = 0;
    py::ssize_t N = 0;
    Arg w_hh, w_hr, h0, c0;
    std::vector<py::object> keep;  // every array of the call, alive as long as the call

    Common(const std::string& cell_name, const py::object& bs, const py::object& weight_hh, const py::object& weight_hr,
           const py::object& h0_, const py::object& c0_) {
        cell = cell_id(cell_name);
        const bool lstm = cell == rnnfast::kLstm;
        G = rnnfast::cell_info(cell).gates;
        if (!py::isinstance<py::array>(bs)) throw py::type_error("batch_sizes: expected a 1-D int64 NumPy array");
        const py::array b = bs;
        if (b.ndim() != 1 || !py::isinstance<py::array_t<int64_t>>(b))
            throw py::type_error("batch_sizes: expected a 1-D int64 NumPy array");
        for (py::ssize_t t = 0; t < b.shape(0); ++t) batch_sizes.push_back(*static_cast<const int64_t*>(b.data(t)));
        T = static_cast<int>(batch_sizes.size());
        w_hh = arg("weight_hh", weight_hh, true);
        if (w_hh.dim(0, "(G*H, S)") % G || w_hh.shape[0] == 0)
            throw py::value_error("weight_hh: expected G*H rows (G = " + std::to_string(G) + " gates, H > 0), got shape " +
                                  dims_str(w_hh.shape));
        H = static_cast<int>(w_hh.shape[0] / G);
        w_hr = arg("weight_hr", weight_hr, false);
        if (w_hr.present && !lstm) throw py::value_error("weight_hr: only an lstm has a projection");
        P = w_hr.present ? static_cast<int>(w_hr.dim(0, "(P, H)")) : 0;
        if (w_hr.present && P == 0) throw py::value_error("weight_hr: expected P > 0 rows");
        S = P ? P : H;
        w_hh.expect({G * H, S});
        if (w_hr.present) w_hr.expect({P, H});
        h0 = arg("h0", h0_, true);
        B = static_cast<int>(h0.dim(0, "(B, S)"));
        h0.expect({B, S});
        c0 = arg("c0", c0_, lstm);
        if (c0.present && !lstm) throw py::value_error("c0: only an lstm has a cell state");
        if (lstm) c0.expect({B, H});
        int64_t prev = B;
        for (const int64_t n : batch_sizes) {
            if (n < 0 || n > prev)
                throw py::value_error("batch_sizes: expected non-increasing sizes in [0, B=" + std::to_string(B) +
                                      "] (h0 has B rows), got " + py::str(bs).cast<std::string>());
            prev = n;
            N += n;
        }
        slots = rnnfast::workspace_slots(cell, P > 0);
        keep = {bs, weight_hh, weight_hr, h0_, c0_};
    }

    // An optional or required array of the call, checked against `shape`.
    Arg take(const char* name, const py::object& obj, bool required, const Dims& shape, bool out) {
        Arg a = arg(name, obj, required);
        if (a.present) a.expect(shape, out);
        keep.push_back(obj);
        return a;
    }
    void refuse(const char* name, const py::object& obj, bool allowed, const char* why) const {
        if (!allowed && !obj.is_none()) throw py::value_error(std::string(name) + ": " + why);
    }
    // The recurrent dropout mask [B, G*H] (null: none), which every cell but the projected LSTM runs.
    const float* rec_mask(const py::object& obj) {
        refuse("rec_mask", obj, P == 0, "recurrent dropout runs for every cell but the LSTM with a projection");
        return take("rec_mask", obj, false, {B, static_cast<py::ssize_t>(G) * H}, false).data;
    }
};

struct ForwardCall {
    Common c;
    FwdParams p{};
};

struct BackwardCall {
    Common c;
    BwdParams p{};
};

ForwardCall make_forward(const std::string& cell, const py::object& batch_sizes, const py::object& xp,
                         const py::object& h0, const py::object& c0, const py::object& weight_hh, const py::object& b_ih,
                         const py::object& b_hh, const py::object& y, const py::object& h_n, const py::object& c_n,
                         const py::object& ws, const py::object& weight_hr, const py::object& rec_mask,
                         const py::object& h_drop) {
    ForwardCall f{Common(cell, batch_sizes, weight_hh, weight_hr, h0, c0)};
    Common& c = f.c;
    const bool lstm = c.cell == rnnfast::kLstm;
    const py::ssize_t GH = c.G * c.H;
    c.refuse("c_n", c_n, lstm, "only an lstm has a cell state");
    FwdParams& p = f.p;
    p.xp = c.take("x_proj", xp, true, {c.N, GH}, false).data;
    p.b_ih = c.take("b_ih", b_ih, false, {GH}, false).data;
    p.b_hh = c.take("b_hh", b_hh, false, {GH}, false).data;
    p.y = c.take("y", y, true, {c.N, c.S}, true).data;
    p.h_n = c.take("h_n", h_n, true, {c.B, c.S}, true).data;
    p.c_n = c.take("c_n", c_n, lstm, {c.B, c.H}, true).data;
    p.ws = c.take("ws", ws, false, {c.N, static_cast<py::ssize_t>(c.slots) * c.H}, true).data;
    p.rec_mask = c.rec_mask(rec_mask);
    c.refuse("h_drop", h_drop, p.rec_mask != nullptr, "given without rec_mask");
    p.h_drop = c.take("h_drop", h_drop, p.rec_mask != nullptr, {c.B + c.N, GH}, true).data;
    p.cell = c.cell;
    p.T = c.T; p.B = c.B; p.H = c.H; p.P = c.P;
    p.batch_sizes = c.batch_sizes.data();
    p.h0 = c.h0.data; p.c0 = c.c0.data; p.w_hh = c.w_hh.data; p.w_hr = c.w_hr.data;
    return f;
}

BackwardCall make_backward(const std::string& cell, const py::object& batch_sizes, const py::object& weight_hh,
                           const py::object& h0, const py::object& c0, const py::object& y, const py::object& ws,
                           const py::object& dy, const py::object& dh, const py::object& dc, const py::object& dxg,
                           const py::object& dhg, const py::object& weight_hr, const py::object& dh_all,
                           const py::object& rec_mask) {
    BackwardCall f{Common(cell, batch_sizes, weight_hh, weight_hr, h0, c0)};
    Common& c = f.c;
    const bool lstm = c.cell == rnnfast::kLstm, gru = c.cell == rnnfast::kGru;
    const py::ssize_t GH = c.G * c.H;
    c.refuse("dc", dc, lstm, "only an lstm has a cell state");
    c.refuse("dhg", dhg, gru, "only the gru (linear_before_reset) has separate recurrent gradients");
    c.refuse("dh_all", dh_all, c.P > 0, "only an lstm with a projection (weight_hr) keeps every dh_t");
    BwdParams& p = f.p;
    p.y = c.take("y", y, true, {c.N, c.S}, false).data;
    p.ws = c.take("ws", ws, c.slots > 0, {c.N, static_cast<py::ssize_t>(c.slots) * c.H}, false).data;
    p.dy = c.take("dy", dy, false, {c.N, c.S}, false).data;
    p.dh = c.take("dh", dh, true, {c.B, c.S}, true).data;
    p.dc = c.take("dc", dc, lstm, {c.B, c.H}, true).data;
    p.dxg = c.take("dxg", dxg, true, {c.N, GH}, true).data;
    p.dhg = c.take("dhg", dhg, gru, {c.N, GH}, true).data;
    p.dh_all = c.take("dh_all", dh_all, c.P > 0, {c.N, c.P}, true).data;
    p.rec_mask = c.rec_mask(rec_mask);
    p.cell = c.cell;
    p.T = c.T; p.B = c.B; p.H = c.H; p.P = c.P;
    p.batch_sizes = c.batch_sizes.data();
    p.h0 = c.h0.data; p.c0 = c.c0.data; p.w_hh = c.w_hh.data; p.w_hr = c.w_hr.data;
    return f;
}

rnnfast_cuda::Request request(int path, int units, int threads) {
    if (path < 0 || path > 2) throw py::value_error("path: expected 0 (auto), 1 (persistent) or 2 (per-step)");
    if (threads < 32 || threads % 32 || threads > 1024) throw py::value_error("threads: a multiple of 32 up to 1024");
    if (units < 0) throw py::value_error("units_per_block: expected >= 0");
    rnnfast_cuda::Request q;
    q.path = path;
    q.units_per_block = units;
    q.threads = threads;
    return q;
}

// Launches with the GIL released; a failed launch raises RuntimeError naming what failed.
template <class Call, class Launch>
int run(const Call& call, std::uintptr_t stream, int path, int units, int threads, const char* what, Launch launch) {
    const rnnfast_cuda::Request q = request(path, units, threads);
    int used = 0;
    std::string err;
    {
        py::gil_scoped_release nogil;
        err = launch(q, call.p, reinterpret_cast<void*>(stream), &used);
    }
    if (!err.empty()) throw std::runtime_error(std::string(what) + ": " + err);
    return used;
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
    const py::object none = py::none();

    py::class_<ForwardCall>(m, "ForwardCall",
                            "One layer direction's forward recurrence, checked: shapes as in csrc/cuda/launch.h. "
                            "c_n is the running cell state (LSTM); ws the training workspace or None.")
        .def(py::init(&make_forward), py::kw_only(), py::arg("cell"), py::arg("batch_sizes"), py::arg("x_proj"),
             py::arg("h0"), py::arg("c0") = none, py::arg("weight_hh"), py::arg("b_ih") = none,
             py::arg("b_hh") = none, py::arg("y"), py::arg("h_n"), py::arg("c_n") = none, py::arg("ws") = none,
             py::arg("weight_hr") = none, py::arg("rec_mask") = none, py::arg("h_drop") = none)
        .def_property_readonly("cell", [](const ForwardCall& f) { return rnnfast::cell_info(f.c.cell).name; });

    py::class_<BackwardCall>(m, "BackwardCall",
                             "One layer direction's BPTT, checked: dh (in: dh_n, out: dh0) and dc likewise; writes "
                             "dxg (and dhg for the GRU, dh_all with a projection).")
        .def(py::init(&make_backward), py::kw_only(), py::arg("cell"), py::arg("batch_sizes"), py::arg("weight_hh"),
             py::arg("h0"), py::arg("c0") = none, py::arg("y"), py::arg("ws") = none, py::arg("dy") = none,
             py::arg("dh"), py::arg("dc") = none, py::arg("dxg"), py::arg("dhg") = none, py::arg("weight_hr") = none,
             py::arg("dh_all") = none, py::arg("rec_mask") = none)
        .def_property_readonly("cell", [](const BackwardCall& f) { return rnnfast::cell_info(f.c.cell).name; });

    m.def("forward",
          [](const ForwardCall& call, std::uintptr_t stream, int path, int units_per_block, int threads) {
              return run(call, stream, path, units_per_block, threads, "CUDA forward", rnnfast_cuda::forward);
          },
          py::arg("call"), py::arg("stream") = 0, py::arg("path") = 0, py::arg("units_per_block") = 0,
          py::arg("threads") = 128, "All steps of the recurrence; returns the path taken (1 persistent, 2 per-step).");
    m.def("backward",
          [](const BackwardCall& call, std::uintptr_t stream, int path, int units_per_block, int threads) {
              return run(call, stream, path, units_per_block, threads, "CUDA backward", rnnfast_cuda::backward);
          },
          py::arg("call"), py::arg("stream") = 0, py::arg("path") = 0, py::arg("units_per_block") = 0,
          py::arg("threads") = 128, "BPTT through a forward's results; returns the path taken.");
}
