// bindings.cpp: the rnnfast._C module. Array checks, GIL release, and nothing else: no math here.
//
// Every entry point checks dtypes, shapes and contiguity of what it is given and raises ValueError or
// TypeError naming the argument before any kernel runs; kernels run with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common/cells.h"
#include "../cpu/kernels.h"

namespace py = pybind11;
using rnnfast::cpu::Table;

namespace {

enum class DType { f32, f64, none };

// Whether a's dtype is T's: by equivalence, not identity (an unpickled or otherwise rebuilt dtype object is
// a different object for the same type; a byte-swapped one is not equivalent and is refused).
template <typename T>
bool has_dtype(const py::array& a) { return py::isinstance<py::array_t<T>>(a); }

DType dtype_of(const py::array& a, const char* name) {
    if (has_dtype<float>(a)) return DType::f32;
    if (has_dtype<double>(a)) return DType::f64;
    throw py::type_error(std::string(name) + ": expected a float32 or float64 array, got dtype " +
                         py::str(a.dtype()).cast<std::string>());
}

int cell_id(const std::string& cell) {
    std::string names;
    for (int id = 0; id < rnnfast::kNumCells; ++id) {
        if (cell == rnnfast::cell_info(id).name) return id;
        names += std::string(id ? ", '" : "'") + rnnfast::cell_info(id).name + "'";
    }
    throw py::value_error("cell: expected one of " + names + ", got '" + cell + "'");
}
int gates_of(int cell) { return rnnfast::cell_info(cell).gates; }

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checks one array argument: dtype, C-contiguity and exact shape. None is allowed when optional.
template <typename T>
const T* in_ptr(const py::object& o, const char* name, std::vector<py::ssize_t> shape, bool optional = false) {
    if (o.is_none()) {
        if (optional) return nullptr;
        throw py::type_error(std::string(name) + ": expected an array, got None");
    }
    if (!py::isinstance<py::array>(o)) throw py::type_error(std::string(name) + ": expected a numpy array");
    py::array a = o.cast<py::array>();
    if (!has_dtype<T>(a))
        throw py::type_error(std::string(name) + ": expected dtype " + py::str(py::dtype::of<T>()).cast<std::string>() +
                             ", got " + py::str(a.dtype()).cast<std::string>());
    bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
    for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
    if (!ok) {
        std::string want = "(";
        for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
        throw py::value_error(std::string(name) + ": expected shape " + want + (shape.size() == 1 ? ",)" : ")") +
                              ", got " + shape_str(a));
    }
    if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": expected a C-contiguous array");
    return static_cast<const T*>(a.data());
}

template <typename T>
T* out_ptr(const py::object& o, const char* name, std::vector<py::ssize_t> shape, bool optional = false) {
    const T* p = in_ptr<T>(o, name, shape, optional);
    if (p && !o.cast<py::array>().writeable())
        throw py::value_error(std::string(name) + ": array is read-only");
    return const_cast<T*>(p);
}

template <typename T>
const Table<T>& table();
template <>
const Table<float>& table<float>() { return rnnfast::cpu::select().f32; }
template <>
const Table<double>& table<double>() { return rnnfast::cpu::select().f64; }

// Weights packed for the kernels, with a copy of the source so that a changed weight is never served stale.
// gates > 0: a recurrent W_hh (G*H, H) in the recurrence kernels' layouts; gates == 0: any (N, K) matrix w
// packed as the right operand of x @ w^T (a layer's W_ih). bfloat16: a float32 W_hh rounded to bf16 for the
// inference forwards of that mode (gemm_bf16.h); it has no backward layout.
class Packed {
  public:
    Packed(py::array w, int gates, bool bfloat16) : gates_(gates), bf16_(bfloat16) {
        dtype_ = dtype_of(w, "weight");
        if (gates < 0) throw py::value_error("gates: expected >= 0");
        if (bf16_ && dtype_ != DType::f32)
            throw py::type_error("weight: bfloat16 packing takes a float32 weight, got " +
                                 py::str(w.dtype()).cast<std::string>());
        if (bf16_ && gates == 0) throw py::value_error("gates: bfloat16 packing is for a recurrent weight (gates > 0)");
        if (w.ndim() != 2 || w.shape(0) < 1 || w.shape(1) < 1 || (gates > 0 && w.shape(0) % gates != 0))
            throw py::value_error("weight: expected shape " + std::string(gates ? "(G*H, K) with G=" + std::to_string(gates)
                                                                                 : "(N, K)") + ", got " + shape_str(w));
        if (!(w.flags() & py::array::c_style)) throw py::value_error("weight: expected a C-contiguous array");
        rows_ = w.shape(0);
        cols_ = w.shape(1);
        source_.assign(static_cast<const char*>(w.data()), static_cast<const char*>(w.data()) + w.nbytes());
        if (bf16_) build_bf16();
        else if (dtype_ == DType::f32) build<float>();
        else build<double>();
    }

    // True when w has the same dtype, shape and bytes as the packed source.
    bool matches(const py::array& w, int threads) const {
        if (w.ndim() != 2 || w.shape(0) != rows_ || w.shape(1) != cols_) return false;
        if (dtype_ != (has_dtype<float>(w) ? DType::f32 : has_dtype<double>(w) ? DType::f64 : DType::none)) return false;
        if (!(w.flags() & py::array::c_style)) return false;
        return static_cast<size_t>(w.nbytes()) == source_.size() &&
               rnnfast::cpu::equal_bytes(w.data(), source_.data(), source_.size(), threads < 0 ? -threads : threads);
    }

    template <typename T>
    const T* forward_panels() const { return bf16_ ? nullptr : reinterpret_cast<const T*>(fwd_.get()); }
    const uint32_t* bf16_panels() const { return bf16_ ? reinterpret_cast<const uint32_t*>(fwd_.get()) : nullptr; }

    // The backward layout is built on first use: inference never pays for it.
    template <typename T>
    const T* backward_panels() {
        if (bf16_)
            throw py::value_error("weight_hh: packed as bfloat16, which only inference forwards read; a backward "
                                  "needs the float32 packing its training forward used");
        std::call_once(bwd_once_, [this] {
            bwd_ = alloc(sizeof(T) * table<T>().packed_size_backward(gates_, hidden(), state()));
            table<T>().pack_backward(reinterpret_cast<const T*>(source_.data()), gates_, hidden(), state(),
                                     reinterpret_cast<T*>(bwd_.get()));
        });
        return reinterpret_cast<const T*>(bwd_.get());
    }

    int gates() const { return gates_; }
    // Recurrent weights (G*H, K): H units per gate, K the state size (H, or the LSTM's proj_size).
    int hidden() const { return static_cast<int>(gates_ > 0 ? rows_ / gates_ : cols_); }
    int state() const { return static_cast<int>(cols_); }
    py::ssize_t rows() const { return rows_; }
    py::ssize_t cols() const { return cols_; }
    DType dtype() const { return dtype_; }
    bool bfloat16() const { return bf16_; }

  private:
    struct Free { void operator()(void* p) const { std::free(p); } };
    using Buf = std::unique_ptr<void, Free>;
    static Buf alloc(size_t bytes) {
        void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
        if (!p) throw std::bad_alloc();
        return Buf(p);
    }
    void build_bf16() {
        const rnnfast::cpu::Bf16Kernels& k = rnnfast::cpu::select().bf16;
        fwd_ = alloc(sizeof(uint32_t) * k.packed_size_forward(gates_, hidden(), state()));
        k.pack_forward(reinterpret_cast<const float*>(source_.data()), gates_, hidden(), state(),
                       reinterpret_cast<uint32_t*>(fwd_.get()));
    }
    template <typename T>
    void build() {
        const T* w = reinterpret_cast<const T*>(source_.data());
        if (gates_ > 0) {
            fwd_ = alloc(sizeof(T) * table<T>().packed_size_forward(gates_, hidden(), state()));
            table<T>().pack_forward(w, gates_, hidden(), state(), reinterpret_cast<T*>(fwd_.get()));
        } else {
            const py::ssize_t nr = table<T>().panel_width;
            fwd_ = alloc(sizeof(T) * ((rows_ + nr - 1) / nr * nr) * cols_);
            table<T>().pack_matrix_t(w, rows_, cols_, reinterpret_cast<T*>(fwd_.get()));
        }
    }

    int gates_;
    bool bf16_;
    py::ssize_t rows_, cols_;
    DType dtype_;
    std::vector<char> source_;
    Buf fwd_, bwd_;
    std::once_flag bwd_once_;
};

// threads > 0: at most that many (kernels use fewer on small problems); threads < 0: exactly -threads.
int check_threads(int threads) {
    if (threads == 0) throw py::value_error("threads: expected a non-zero integer");
    return threads;
}

// batch_sizes: int64 [T], bs[t] active rows at step t, 1 <= bs[t] <= bs[t-1] (see csrc/cpu/recurrence.h).
// Returns its sum, the number of token rows.
py::ssize_t check_batch_sizes(const py::array& bs) {
    if (!has_dtype<int64_t>(bs) || bs.ndim() != 1 || !(bs.flags() & py::array::c_style))
        throw py::type_error("batch_sizes: expected a contiguous 1-D int64 array");
    const int64_t* p = static_cast<const int64_t*>(bs.data());
    py::ssize_t n = 0;
    for (py::ssize_t t = 0; t < bs.shape(0); ++t) {
        if (p[t] < 1 || (t > 0 && p[t] > p[t - 1]))
            throw py::value_error("batch_sizes: expected positive, non-increasing sizes");
        n += p[t];
    }
    return n;
}

template <typename T>
void check_weight_dtype(const Packed& w, const Packed* wr) {
    const DType want = std::is_same<T, float>::value ? DType::f32 : DType::f64;
    if (w.dtype() != want || (wr && wr->dtype() != want))
        throw py::type_error("weight_hh: its dtype differs from the activations'");
}

// The LSTM projection W_hr (P, H), packed as a one-gate recurrent weight; P = 0 without one.
int check_projection(int cell, const Packed& w, Packed* wr) {
    const int H = w.hidden(), K = w.state();
    if (!wr) {
        if (K != H) throw py::value_error("weight_hh: expected a square (G*H, H) weight without a projection");
        return 0;
    }
    if (cell != rnnfast::kLstm) throw py::value_error("weight_hr: only an LSTM has a projection");
    if (wr->gates() != 1 || wr->hidden() != K || wr->state() != H || wr->dtype() != w.dtype())
        throw py::value_error("weight_hr: expected shape (P, H) = (" + std::to_string(K) + ", " + std::to_string(H) +
                              ") and the dtype of weight_hh");
    if (K >= H) throw py::value_error("weight_hr: proj_size must be smaller than hidden_size");
    return K;
}

// The token count N, the step count T and the batch size B (the rows of h0, and batch_sizes[0]).
std::tuple<py::ssize_t, py::ssize_t, py::ssize_t> check_steps(const py::array& bs, const py::object& h0) {
    const py::ssize_t N = check_batch_sizes(bs), T_ = bs.shape(0);
    if (h0.is_none() || !py::isinstance<py::array>(h0) || h0.cast<py::array>().ndim() != 2)
        throw py::value_error("h0: expected a 2-D array (B, H)");
    const py::ssize_t B = h0.cast<py::array>().shape(0);
    if (B < 1) throw py::value_error("h0: batch size must be at least 1");
    if (T_ > 0 && static_cast<const int64_t*>(bs.data())[0] != B)
        throw py::value_error("batch_sizes: the first size must equal the batch size of h0");
    return {N, T_, B};
}

template <typename T>
rnnfast::cpu::ForwardCall<T> forward_call(int cell, const py::array& bs, const py::array& xp, const py::object& h0,
                                          const py::object& c0, Packed& w, const py::object& b_ih,
                                          const py::object& b_hh, const py::object& y, const py::object& h_n,
                                          const py::object& c_n, const py::object& ws, Packed* wr) {
    check_weight_dtype<T>(w, wr);
    const int G = gates_of(cell), H = w.hidden();
    if (w.gates() != G) throw py::value_error("weight_hh: packed for a different cell");
    const int P = check_projection(cell, w, wr), S = P ? P : H;
    const auto [N, T_, B] = check_steps(bs, h0);
    rnnfast::cpu::ForwardCall<T> c{};
    const bool lstm = cell == rnnfast::kLstm;
    c.cell = cell; c.T_ = static_cast<int>(T_); c.B = static_cast<int>(B); c.H = H;
    c.bs = static_cast<const int64_t*>(bs.data());
    c.xp = in_ptr<T>(xp, "xp", {N, G * H});
    c.h0 = in_ptr<T>(h0, "h0", {B, S});
    c.c0 = in_ptr<T>(c0, "c0", {B, H}, !lstm);
    c.wf = w.forward_panels<T>();
    c.wf_bf16 = w.bf16_panels();
    c.b_ih = in_ptr<T>(b_ih, "b_ih", {G * H}, true);
    c.b_hh = in_ptr<T>(b_hh, "b_hh", {G * H}, true);
    c.y = out_ptr<T>(y, "y", {N, S});
    c.h_n = out_ptr<T>(h_n, "h_n", {B, S});
    c.c_n = out_ptr<T>(c_n, "c_n", {B, H}, !lstm);
    c.ws = out_ptr<T>(ws, "ws", {N, rnnfast::workspace_slots(cell, P > 0) * H}, true);
    c.P = P;
    if (P && wr->bfloat16()) throw py::value_error("weight_hr: the projection is read as float32 in every mode");
    c.wr = P ? wr->forward_panels<T>() : nullptr;
    return c;
}

template <typename T>
rnnfast::cpu::BackwardCall<T> backward_call(int cell, const py::array& bs, Packed& w, const py::object& h0,
                                            const py::object& c0, const py::array& y, const py::object& ws,
                                            const py::object& dy, const py::object& dh_n, const py::object& dc_n,
                                            const py::object& dxg, const py::object& dhg, const py::object& dh0,
                                            const py::object& dc0, const py::object& db_ih, const py::object& db_hh,
                                            Packed* wr, const py::object& dh_all) {
    check_weight_dtype<T>(w, wr);
    const int G = gates_of(cell), H = w.hidden();
    if (w.gates() != G) throw py::value_error("weight_hh: packed for a different cell");
    const int P = check_projection(cell, w, wr), S = P ? P : H;
    const auto [N, T_, B] = check_steps(bs, h0);
    rnnfast::cpu::BackwardCall<T> c{};
    const bool lstm = cell == rnnfast::kLstm;
    const int slots = rnnfast::workspace_slots(cell, P > 0);
    c.cell = cell; c.T_ = static_cast<int>(T_); c.B = static_cast<int>(B); c.H = H;
    c.bs = static_cast<const int64_t*>(bs.data());
    c.y = in_ptr<T>(y, "y", {N, S});
    c.h0 = in_ptr<T>(h0, "h0", {B, S});
    c.c0 = in_ptr<T>(c0, "c0", {B, H}, !lstm);
    c.ws = in_ptr<T>(ws, "ws", {N, slots * H}, slots == 0);
    c.dy = in_ptr<T>(dy, "dy", {N, S}, true);
    c.dh_n = in_ptr<T>(dh_n, "dh_n", {B, S}, true);
    c.dc_n = in_ptr<T>(dc_n, "dc_n", {B, H}, true);
    c.dxg = out_ptr<T>(dxg, "dxg", {N, G * H});
    c.dhg = out_ptr<T>(dhg, "dhg", {N, G * H}, cell != rnnfast::kGru);
    c.dh0 = out_ptr<T>(dh0, "dh0", {B, S});
    c.dc0 = out_ptr<T>(dc0, "dc0", {B, H}, true);
    c.db_ih = out_ptr<T>(db_ih, "db_ih", {G * H}, true);
    c.db_hh = out_ptr<T>(db_hh, "db_hh", {G * H}, true);
    c.wb = w.backward_panels<T>();
    c.P = P;
    if (P) {
        c.wr = wr->backward_panels<T>();
        c.dh_all = out_ptr<T>(dh_all, "dh_all", {N, P});
    }
    return c;
}

// A validated recurrence call of either dtype, built from named arguments (ForwardCall / BackwardCall in
// Python). It keeps the arrays it points into alive, and the packed weights, until it is dropped.
template <template <typename> class Call>
struct CallObject {
    DType dtype;
    Call<float> f32{};
    Call<double> f64{};
    py::object keep;  // every argument, so that no buffer is freed while the call exists
};
using ForwardCallObject = CallObject<rnnfast::cpu::ForwardCall>;
using BackwardCallObject = CallObject<rnnfast::cpu::BackwardCall>;

Packed* optional_packed(const py::object& o, const char* name) {
    if (o.is_none()) return nullptr;
    if (!py::isinstance<Packed>(o)) throw py::type_error(std::string(name) + ": expected PackedWeights or None");
    return &o.cast<Packed&>();
}

Packed& packed_arg(const py::object& o, const char* name) {
    if (!py::isinstance<Packed>(o)) throw py::type_error(std::string(name) + ": expected PackedWeights");
    return o.cast<Packed&>();
}

py::array batch_sizes_arg(const py::object& o) {
    if (!py::isinstance<py::array>(o)) throw py::type_error("batch_sizes: expected a numpy int64 array");
    return o.cast<py::array>();
}

// Runs independent recurrences (the two directions of a layer) at once, each on its own thread.
template <typename Object>
void run(const std::vector<Object*>& calls, int threads, bool forward) {
    check_threads(threads);
    if (calls.empty()) throw py::value_error("calls: expected at least one call");
    for (const Object* c : calls)
        if (c->dtype != calls[0]->dtype) throw py::type_error("calls: every call must have the same dtype");
    auto go = [&](auto tag) {
        using T = decltype(tag);
        std::vector<std::conditional_t<std::is_same<Object, ForwardCallObject>::value, rnnfast::cpu::ForwardCall<T>,
                                       rnnfast::cpu::BackwardCall<T>>> cs;
        for (const Object* c : calls) {
            if constexpr (std::is_same<T, float>::value) cs.push_back(c->f32); else cs.push_back(c->f64);
        }
        py::gil_scoped_release nogil;
        if constexpr (std::is_same<Object, ForwardCallObject>::value)
            table<T>().forward(cs.data(), static_cast<int>(cs.size()), threads);
        else
            table<T>().backward(cs.data(), static_cast<int>(cs.size()), threads);
    };
    if (calls[0]->dtype == DType::f32) go(float{}); else go(double{});
}

template <typename T>
void gemm_t(const py::array& a, const py::array& b, const py::array& c, bool accumulate, int threads, int variant) {
    if (a.ndim() != 2 || b.ndim() != 2 || c.ndim() != 2)
        throw py::value_error("gemm: a, b and c must be 2-D");
    const py::ssize_t M = a.shape(0), K = a.shape(1), N = b.shape(1);
    if (b.shape(0) != K) throw py::value_error("b: expected " + std::to_string(K) + " rows, got " + shape_str(b));
    if (c.shape(0) != M || c.shape(1) != N)
        throw py::value_error("c: expected shape (" + std::to_string(M) + ", " + std::to_string(N) + "), got " +
                              shape_str(c));
    if (!has_dtype<T>(a) || !has_dtype<T>(b) || !has_dtype<T>(c)) throw py::type_error("gemm: a, b and c must share a dtype");
    if (c.strides(1) != static_cast<py::ssize_t>(sizeof(T)) || c.strides(0) < N * static_cast<py::ssize_t>(sizeof(T)))
        throw py::value_error("c: rows must be contiguous");
    if (!c.writeable()) throw py::value_error("c: array is read-only");
    const py::ssize_t s = sizeof(T);
    rnnfast::cpu::GemmCall<T> g{M, N, K,
                                static_cast<const T*>(a.data()), a.strides(0) / s, a.strides(1) / s,
                                static_cast<const T*>(b.data()), b.strides(0) / s, b.strides(1) / s,
                                static_cast<T*>(const_cast<void*>(c.data())), c.strides(0) / s, accumulate,
                                variant};
    py::gil_scoped_release nogil;
    table<T>().gemm(g, threads);
}

template <typename T>
void gemm_packed_t(const py::array& a, Packed& w, const py::array& c, bool accumulate, int threads, int variant) {
    if (w.gates() != 0) throw py::value_error("weight: packed as a recurrent matrix, not for gemm_packed");
    if (a.ndim() != 2 || c.ndim() != 2) throw py::value_error("gemm_packed: a and c must be 2-D");
    const py::ssize_t M = a.shape(0), K = a.shape(1), N = w.rows();
    if (K != w.cols()) throw py::value_error("a: expected " + std::to_string(w.cols()) + " columns, got " + shape_str(a));
    if (!has_dtype<T>(a) || !has_dtype<T>(c))
        throw py::type_error("gemm_packed: a, c and the weight must share a dtype");
    if (c.shape(0) != M || c.shape(1) != N)
        throw py::value_error("c: expected shape (" + std::to_string(M) + ", " + std::to_string(N) + "), got " + shape_str(c));
    if (c.strides(1) != static_cast<py::ssize_t>(sizeof(T)) || c.strides(0) < N * static_cast<py::ssize_t>(sizeof(T)))
        throw py::value_error("c: rows must be contiguous");
    if (!c.writeable()) throw py::value_error("c: array is read-only");
    const py::ssize_t s = sizeof(T);
    rnnfast::cpu::PackedGemmCall<T> g{M, N, K, static_cast<const T*>(a.data()), a.strides(0) / s, a.strides(1) / s,
                                      w.forward_panels<T>(), static_cast<T*>(const_cast<void*>(c.data())),
                                      c.strides(0) / s, accumulate, variant};
    py::gil_scoped_release nogil;
    table<T>().gemm_packed(g, threads);
}

// variant: -1 (the variant in force) or an index of gemm_variants(dtype).
template <typename T>
int check_variant(int variant) {
    if (variant < -1 || variant >= table<T>().variant_count)
        throw py::value_error("variant: expected -1 or an index below " + std::to_string(table<T>().variant_count) +
                              ", got " + std::to_string(variant));
    return variant;
}

int check_variant(DType dt, int variant) {
    return dt == DType::f32 ? check_variant<float>(variant) : check_variant<double>(variant);
}

DType dtype_arg(const py::object& dtype) {
    const py::dtype dt = py::dtype::from_args(dtype);
    if (dt.equal(py::dtype::of<float>())) return DType::f32;
    if (dt.equal(py::dtype::of<double>())) return DType::f64;
    throw py::type_error("dtype: expected float32 or float64, got " + py::str(dt).cast<std::string>());
}

template <typename T>
py::list variants_of() {
    py::list out;
    for (int i = 0; i < table<T>().variant_count; ++i) {
        const rnnfast::cpu::VariantInfo v = table<T>().variant_info(i);
        out.append(py::dict(py::arg("name") = v.name, py::arg("mr") = v.mr, py::arg("nr") = table<T>().panel_width,
                            py::arg("a_block") = v.a_block, py::arg("tiles_outer") = v.tiles_outer));
    }
    return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "rnnfast CPU kernels (fused recurrences, packed weights, GEMM). Internal: use rnnfast.functional.";
    m.def("isa", [] { return std::string(rnnfast::cpu::select().name); },
          "The instruction-set build the kernels run on (avx512, avx2 or generic).");
    m.def("core_round_trip_ns", [](int iterations, double max_ms) {
        if (iterations < 1) throw py::value_error("iterations: expected a positive integer");
        if (!(max_ms > 0 && max_ms <= 60000)) throw py::value_error("max_ms: expected a time in (0, 60000]");
        py::gil_scoped_release nogil;
        return rnnfast::cpu::core_round_trip_ns(iterations, max_ms);
    }, py::arg("iterations") = 100000, py::arg("max_ms") = 100.0,
          "Round trip of a cache line between two kernel threads (ns): the floor of one step's barrier. The mean "
          "over `iterations` round trips, or over those done within max_ms (where the threads share a core).");
    m.def("crossing_macs", [](int macs) {
        if (macs < 0 || macs > (1 << 26)) throw py::value_error("macs: expected 0 (read only) or 1..2^26");
        return rnnfast::cpu::select().crossing_macs(macs);
    }, py::arg("macs") = 0,
          "The multiply-adds one barrier crossing is worth when a recurrence sizes its team (threads only where a "
          "step has that many per thread); sets it when macs > 0, returns the value in force.");
    m.def("team_pressure", [] {
        const auto& isa = rnnfast::cpu::select();
        return py::dict(py::arg("starved_calls") = isa.starved_team_calls(), py::arg("solo") = isa.teams_solo());
    }, "How many kernel team calls of this process found its teams starved (members waiting most of the call for a "
       "thread the OS had taken off its core), and whether teams run on one thread now because of it.");
    m.def("read_bandwidth_gbps", [](py::ssize_t bytes, int threads, int reps) {
        if (bytes < 1) throw py::value_error("bytes: expected a positive integer");
        if (threads < 1 || threads > 256) throw py::value_error("threads: expected 1..256");
        if (reps < 1) throw py::value_error("reps: expected a positive integer");
        const auto& isa = rnnfast::cpu::select();
        py::gil_scoped_release nogil;
        return isa.read_gbps(static_cast<size_t>(bytes), threads, reps);
    }, py::arg("bytes"), py::arg("threads") = 1, py::arg("reps") = 20,
          "GB/s of `threads` kernel threads each reading its own buffer of `bytes` (best of `reps` passes): the "
          "cache bandwidth at that footprint, with the kernels' vector loads.");
    m.def("bf16_native", [] { return rnnfast::cpu::select().bf16.native != 0; },
          "Whether the bfloat16 products run on AVX512_BF16 here (else on their exact emulation).");
    m.def("bf16_round", [](const py::array& x) {
              const float* p = in_ptr<float>(x, "x", {x.size()});
              py::array_t<uint16_t> out(x.size());
              rnnfast::cpu::select().bf16.round(p, x.size(), out.mutable_data());
              return out;
          }, py::arg("x"), "The bits of a 1-D float32 array rounded to bf16 as the kernels round (tests).");
    m.def("panel_width", [](const py::dtype& dt) {
        return dt.equal(py::dtype::of<float>()) ? table<float>().panel_width : table<double>().panel_width;
    });

    py::class_<Packed>(m, "PackedWeights")
        .def(py::init<py::array, int, bool>(), py::arg("weight"), py::arg("gates"), py::arg("bfloat16") = false,
             "Packs a recurrent weight_hh (gates = G) or, with gates=0, a matrix w for x @ w^T. bfloat16=True: a "
             "float32 weight_hh rounded to bf16 for inference forwards (no backward).")
        .def("matches", &Packed::matches, py::arg("weight"), py::arg("threads") = 1,
             "True when weight still equals (same dtype, shape and bytes) the weights that were packed.")
        .def_property_readonly("gates", &Packed::gates)
        .def_property_readonly("bfloat16", &Packed::bfloat16)
        .def_property_readonly("hidden_size", &Packed::hidden)
        .def_property_readonly("state_size", &Packed::state);

    m.def("gemm_packed",
          [](const py::array& a, Packed& w, const py::array& c, bool accumulate, int threads, int variant) {
              check_threads(threads);
              if (dtype_of(a, "a") != w.dtype()) throw py::type_error("a: dtype differs from the weight's");
              check_variant(w.dtype(), variant);
              if (w.dtype() == DType::f32) gemm_packed_t<float>(a, w, c, accumulate, threads, variant);
              else gemm_packed_t<double>(a, w, c, accumulate, threads, variant);
          },
          py::arg("a"), py::arg("weight"), py::arg("c"), py::arg("accumulate") = false, py::arg("threads") = 1,
          py::arg("variant") = -1,
          "c = a @ weight^T (or +=) with weight packed by PackedWeights(weight, 0); variant: an index of "
          "gemm_variants (the tuner's timings), -1 for the one in force.");

    m.def("gemm_variants", [](const py::object& dtype) {
        return dtype_arg(dtype) == DType::f32 ? variants_of<float>() : variants_of<double>();
    }, py::arg("dtype"),
          "The compiled GEMM variants of this build for a dtype (the first is the default): name, mr, nr, a_block "
          "(bytes of A per L2 block), tiles_outer. Every variant gives the same bits.");
    m.def("chosen_gemm_variants", [](const py::object& dtype) {
        const DType dt = dtype_arg(dtype);
        auto get = [&](int which) {
            return dt == DType::f32 ? table<float>().chosen_variant(which) : table<double>().chosen_variant(which);
        };
        return py::make_tuple(get(0), get(1));
    }, py::arg("dtype"), "(GEMM variant, per-step product variant) in force for a dtype, as indices.");
    m.def("choose_gemm_variants", [](const py::object& dtype, int gemm, int step) {
        const DType dt = dtype_arg(dtype);
        if (gemm < 0 || step < 0) throw py::value_error("choose_gemm_variants: expected indices >= 0");
        check_variant(dt, gemm);
        check_variant(dt, step);
        if (dt == DType::f32) {
            table<float>().choose_variant(0, gemm);
            table<float>().choose_variant(1, step);
        } else {
            table<double>().choose_variant(0, gemm);
            table<double>().choose_variant(1, step);
        }
    }, py::arg("dtype"), py::arg("gemm"), py::arg("step"),
          "Sets the variants the time-parallel GEMMs and the per-step recurrent products of a dtype run "
          "(rnnfast/_tuning.py does, once per process).");

    m.def("cell_info", [] {
        py::dict out;
        for (int id = 0; id < rnnfast::kNumCells; ++id) {
            const rnnfast::CellInfo c = rnnfast::cell_info(id);
            py::list names;
            for (int i = 0; i < std::max(c.slots, c.proj_slots); ++i) names.append(c.slot_names[i]);
            out[py::str(c.name)] = py::dict(py::arg("id") = id, py::arg("gates") = c.gates,
                                            py::arg("slots") = c.slots, py::arg("proj_slots") = c.proj_slots,
                                            py::arg("slot_names") = names, py::arg("cell_state") = c.cell_state,
                                            py::arg("recurrent_grads") = c.recurrent_grads,
                                            py::arg("reset_before_product") = c.reset_before_product);
        }
        return out;
    }, "Every cell's id, gate count, workspace slots per unit (with an LSTM projection: proj_slots) and the facts the "
       "data flow asks (cell_state, recurrent_grads, reset_before_product), as csrc/common/cells.h defines them.");

    py::class_<ForwardCallObject>(m, "ForwardCall",
        "One recurrence forward over packed tokens (csrc/cpu/recurrence.h documents every tensor), checked when "
        "built: writes y, h_n, c_n and, in training, the workspace ws.")
        .def(py::init([](const std::string& cell, const py::object& batch_sizes, const py::object& xp,
                         const py::object& h0, const py::object& c0, const py::object& weight_hh,
                         const py::object& b_ih, const py::object& b_hh, const py::object& y, const py::object& h_n,
                         const py::object& c_n, const py::object& ws, const py::object& weight_hr) {
                 auto c = std::make_unique<ForwardCallObject>();
                 const int id = cell_id(cell);
                 Packed& w = packed_arg(weight_hh, "weight_hh");
                 Packed* wr = optional_packed(weight_hr, "weight_hr");
                 if (!py::isinstance<py::array>(xp)) throw py::type_error("xp: expected a numpy array");
                 c->dtype = dtype_of(xp.cast<py::array>(), "xp");
                 const py::array bs = batch_sizes_arg(batch_sizes);
                 if (c->dtype == DType::f32)
                     c->f32 = forward_call<float>(id, bs, xp.cast<py::array>(), h0, c0, w, b_ih, b_hh, y, h_n, c_n, ws, wr);
                 else
                     c->f64 = forward_call<double>(id, bs, xp.cast<py::array>(), h0, c0, w, b_ih, b_hh, y, h_n, c_n, ws, wr);
                 c->keep = py::make_tuple(batch_sizes, xp, h0, c0, weight_hh, b_ih, b_hh, y, h_n, c_n, ws, weight_hr);
                 return c;
             }),
             py::kw_only(), py::arg("cell"), py::arg("batch_sizes"), py::arg("xp"), py::arg("h0"),
             py::arg("c0") = py::none(), py::arg("weight_hh"), py::arg("b_ih") = py::none(),
             py::arg("b_hh") = py::none(), py::arg("y"), py::arg("h_n"), py::arg("c_n") = py::none(),
             py::arg("ws") = py::none(), py::arg("weight_hr") = py::none());

    py::class_<BackwardCallObject>(m, "BackwardCall",
        "BPTT through one training forward (csrc/cpu/recurrence.h documents every tensor), checked when built: "
        "writes dxg (and dhg for the GRU), dh0, dc0 and dh_all; adds into db_ih and db_hh.")
        .def(py::init([](const std::string& cell, const py::object& batch_sizes, const py::object& weight_hh,
                         const py::object& h0, const py::object& c0, const py::object& y, const py::object& ws,
                         const py::object& dy, const py::object& dh_n, const py::object& dc_n, const py::object& dxg,
                         const py::object& dhg, const py::object& dh0, const py::object& dc0,
                         const py::object& db_ih, const py::object& db_hh, const py::object& weight_hr,
                         const py::object& dh_all) {
                 auto c = std::make_unique<BackwardCallObject>();
                 const int id = cell_id(cell);
                 Packed& w = packed_arg(weight_hh, "weight_hh");
                 Packed* wr = optional_packed(weight_hr, "weight_hr");
                 if (!py::isinstance<py::array>(y)) throw py::type_error("y: expected a numpy array");
                 c->dtype = dtype_of(y.cast<py::array>(), "y");
                 const py::array bs = batch_sizes_arg(batch_sizes);
                 if (c->dtype == DType::f32)
                     c->f32 = backward_call<float>(id, bs, w, h0, c0, y.cast<py::array>(), ws, dy, dh_n, dc_n, dxg, dhg,
                                                   dh0, dc0, db_ih, db_hh, wr, dh_all);
                 else
                     c->f64 = backward_call<double>(id, bs, w, h0, c0, y.cast<py::array>(), ws, dy, dh_n, dc_n, dxg,
                                                    dhg, dh0, dc0, db_ih, db_hh, wr, dh_all);
                 c->keep = py::make_tuple(batch_sizes, weight_hh, h0, c0, y, ws, dy, dh_n, dc_n, dxg, dhg, dh0, dc0,
                                          db_ih, db_hh, weight_hr, dh_all);
                 return c;
             }),
             py::kw_only(), py::arg("cell"), py::arg("batch_sizes"), py::arg("weight_hh"), py::arg("h0"),
             py::arg("c0") = py::none(), py::arg("y"), py::arg("ws") = py::none(), py::arg("dy") = py::none(),
             py::arg("dh_n") = py::none(), py::arg("dc_n") = py::none(), py::arg("dxg"), py::arg("dhg") = py::none(),
             py::arg("dh0"), py::arg("dc0") = py::none(), py::arg("db_ih") = py::none(),
             py::arg("db_hh") = py::none(), py::arg("weight_hr") = py::none(), py::arg("dh_all") = py::none());

    m.def("forward", [](const std::vector<ForwardCallObject*>& calls, int threads) { run(calls, threads, true); },
          py::arg("calls"), py::arg("threads"),
          "Runs ForwardCalls. Several calls (the directions of a layer) run at once, one thread each; one call "
          "uses up to `threads` threads (-n: exactly n).");
    m.def("backward", [](const std::vector<BackwardCallObject*>& calls, int threads) { run(calls, threads, false); },
          py::arg("calls"), py::arg("threads"), "Runs BackwardCalls, as forward runs ForwardCalls.");

    m.def("gemm",
          [](const py::array& a, const py::array& b, const py::array& c, bool accumulate, int threads, int variant) {
              check_threads(threads);
              const DType dt = dtype_of(a, "a");
              check_variant(dt, variant);
              if (dt == DType::f32) gemm_t<float>(a, b, c, accumulate, threads, variant);
              else gemm_t<double>(a, b, c, accumulate, threads, variant);
          },
          py::arg("a"), py::arg("b"), py::arg("c"), py::arg("accumulate") = false, py::arg("threads") = 1,
          py::arg("variant") = -1,
          "c = a @ b, or c += a @ b with accumulate=True. a and b may be any strided 2-D views. variant: as in "
          "gemm_packed.");
}
