// cells.h: every cell's descriptor and pointwise math, written once for the CPU and CUDA kernels.
//
// This is the only place where a cell's gate count, its workspace layout and its equations exist in C++
// (Python reads the first two through _rnnfast._C.cell_info()). Each cell is a traits type:
//   kName, kGates      torch's name and the number of gates (row blocks of W_ih and W_hh)
//   kCellState         whether the cell carries a state c beside h (the LSTM)
//   kRecurrentGrads    whether the gate gradients on the recurrent side differ from the input side's (the GRU,
//                      whose candidate multiplies W_hn h by r): backward then writes them apart (dhg)
//   kResetBeforeProduct whether the candidate's W_hh rows read r*h_{t-1} instead of h_{t-1} (the original GRU):
//                      its W_hh gradient then reads the workspace slot "rh"
//   enum Slot          the per-unit values a training forward keeps for backward, in workspace order:
//                      ws is [N, slots * H] and slot s of unit u of token row r sits at ws[r*slots*H + s*H + u]
//   forward / backward the pointwise math of one step, reading and writing the workspace by slot name
// The kernels switch on the cell id once per call and run a template instantiated with the traits type.
//
// The pointwise functions are templates over
//   M   the math policy: M::sigmoid(V), M::tanh(V), M::relu(V), M::relu_grad(V), M::c(double)
//   V   the value type: a scalar (float, double) or a SIMD vector of hidden units
// and over accessors each backend defines for its memory layout (a SIMD load/store on the CPU, a plain
// pointer on the GPU):
//   forward in:   in.x(g)  input pre-activation of gate g, (W_ih x_t)[g] + b_ih[g]
//                 in.h(g)  recurrent pre-activation, (W_hh h_{t-1})[g] + b_hh[g]
//                 in.h_prev()  h_{t-1} of the unit
//                 in.h_read(g) h_{t-1} as gate g's recurrent product reads it: under gate g's recurrent dropout
//                              mask where there is one, else h_prev() (only the original GRU's r*h needs it:
//                              the other cells' products are the backend's)
//   workspace:    ws.put(slot, v) (a no-op in inference), sv.get(slot)
//   backward in:  sv.h_prev(), sv.c_prev() (LSTM: c_{t-1}), sv.h_out() (h_t); sv.h_read(g) as in.h_read(g),
//                 sv.drop(g) gate g's recurrent dropout mask of the unit (1 without dropout)
//   gradients:    gr.dx(g, v) w.r.t. the input pre-activation, gr.dh(g, v) w.r.t. the recurrent one, and
//                 gr.both(g, v) where they are equal (every gate but the GRU candidate's)
// and carries: the LSTM cell state c (forward: c_{t-1} in, c_t out; backward: dc_t in, dc_{t-1} out).
// Backward takes dh, the whole gradient w.r.t. h_t, and returns the part of the gradient w.r.t. h_{t-1}
// that does not go through W_hh (the backend adds W_hh^T dh_hh itself).
#pragma once

#if defined(__CUDACC__)
#define RNNFAST_HD __host__ __device__ __forceinline__
#else
#define RNNFAST_HD inline __attribute__((always_inline))
#endif

namespace rnnfast {

// Cell ids, as the bindings, the CPU and the CUDA kernels number them.
enum CellId : int { kRnnTanh = 0, kRnnRelu = 1, kLstm = 2, kGru = 3, kGruOriginal = 4, kNumCells = 5 };

// ---------------------------------------------------------------- RNN: h' = act(x + h)
template <bool Relu>
struct RnnCell {
    static constexpr const char* kName = Relu ? "rnn_relu" : "rnn_tanh";
    static constexpr bool kCellState = false, kRecurrentGrads = false, kResetBeforeProduct = false;
    static constexpr int kGates = 1;
    enum Slot { kSlots = 0 };  // backward needs only h_t, which is the output
    static constexpr const char* kSlotNames[] = {nullptr};

    template <class M, class V, class In, class Ws>
    RNNFAST_HD static V forward(const In& in, V& /*c*/, const Ws& /*ws*/) {
        const V a = in.x(0) + in.h(0);
        if constexpr (Relu) return M::relu(a); else return M::tanh(a);
    }
    template <class M, class V, class Sv, class Gr>
    RNNFAST_HD static V backward(const Sv& sv, V dh, V& /*dc*/, const Gr& gr) {
        const V h = sv.h_out();
        if constexpr (Relu) gr.both(0, dh * M::relu_grad(h)); else gr.both(0, dh * (M::c(1.0) - h * h));
        return M::c(0.0);
    }
};
using RnnTanh = RnnCell<false>;
using RnnRelu = RnnCell<true>;

// ---------------------------------------------------------------- LSTM: gates i, f, g, o (torch order)
// c' = f*c + i*g; h' = o*tanh(c'). With a projection (proj_size P), the output of the cell is
// m = o*tanh(c'), kept in slot kM, and h' = W_hr m (the backend's product).
struct Lstm {
    static constexpr const char* kName = "lstm";
    static constexpr bool kCellState = true, kRecurrentGrads = false, kResetBeforeProduct = false;
    static constexpr int kGates = 4;
    enum Slot { kI, kF, kG, kO, kC, kSlots, kM = kSlots };
    static constexpr const char* kSlotNames[] = {"i", "f", "g", "o", "c", "m"};
    RNNFAST_HD static constexpr int slots(bool projection) { return projection ? kSlots + 1 : kSlots; }

    template <class M, class V, class In, class Ws>
    RNNFAST_HD static V forward(const In& in, V& c, const Ws& ws) {
        const V i = M::sigmoid(in.x(0) + in.h(0));
        const V f = M::sigmoid(in.x(1) + in.h(1));
        const V g = M::tanh(in.x(2) + in.h(2));
        const V o = M::sigmoid(in.x(3) + in.h(3));
        c = f * c + i * g;
        ws.put(kI, i); ws.put(kF, f); ws.put(kG, g); ws.put(kO, o); ws.put(kC, c);
        return o * M::tanh(c);
    }
    template <class M, class V, class Sv, class Gr>
    RNNFAST_HD static V backward(const Sv& sv, V dh, V& dc, const Gr& gr) {
        const V one = M::c(1.0);
        const V i = sv.get(kI), f = sv.get(kF), g = sv.get(kG), o = sv.get(kO);
        const V tc = M::tanh(sv.get(kC));
        const V dct = dc + dh * o * (one - tc * tc);
        gr.both(0, dct * g * i * (one - i));
        gr.both(1, dct * sv.c_prev() * f * (one - f));
        gr.both(2, dct * i * (one - g * g));
        gr.both(3, dh * tc * o * (one - o));
        dc = dct * f;
        return M::c(0.0);
    }
};

// ---------------------------------------------------------------- GRU, linear_before_reset=True (torch)
// r, z = sigmoid(x* + h*); n = tanh(xn + r*hn); h' = (1-z)*n + z*h. hn = (W_hn h + b_hn) is kept.
struct Gru {
    static constexpr const char* kName = "gru";
    static constexpr bool kCellState = false, kRecurrentGrads = true, kResetBeforeProduct = false;
    static constexpr int kGates = 3;
    enum Slot { kR, kZ, kN, kHn, kSlots };
    static constexpr const char* kSlotNames[] = {"r", "z", "n", "hn"};

    template <class M, class V, class In, class Ws>
    RNNFAST_HD static V forward(const In& in, V& /*c*/, const Ws& ws) {
        const V r = M::sigmoid(in.x(0) + in.h(0));
        const V z = M::sigmoid(in.x(1) + in.h(1));
        const V hn = in.h(2);
        const V n = M::tanh(in.x(2) + r * hn);
        ws.put(kR, r); ws.put(kZ, z); ws.put(kN, n); ws.put(kHn, hn);
        return (M::c(1.0) - z) * n + z * in.h_prev();
    }
    template <class M, class V, class Sv, class Gr>
    RNNFAST_HD static V backward(const Sv& sv, V dh, V& /*dc*/, const Gr& gr) {
        const V one = M::c(1.0);
        const V r = sv.get(kR), z = sv.get(kZ), n = sv.get(kN);
        const V dnx = dh * (one - z) * (one - n * n);
        gr.both(0, dnx * sv.get(kHn) * r * (one - r));
        gr.both(1, dh * (sv.h_prev() - n) * z * (one - z));
        gr.dx(2, dnx);
        gr.dh(2, dnx * r);
        return dh * z;
    }
};

// ---------------------------------------------------------------- GRU, linear_before_reset=False (original)
// r, z = sigmoid(x* + h*); n = tanh(xn + W_hn (r*h) + b_hn); h' = (1-z)*n + z*h.
// The candidate needs r*h of every unit before its product, so a step has two phases, forward and backward.
// Slot kRh keeps r*h, which the W_hn product read (dW_hn pairs with it). With recurrent dropout the candidate's
// h is h under its own mask (Keras: r * (h * mask_h)), as W_hr and W_hz read h under theirs (the backend's).
struct GruOriginal {
    static constexpr const char* kName = "gru_original";
    static constexpr bool kCellState = false, kRecurrentGrads = false, kResetBeforeProduct = true;
    static constexpr int kGates = 3;
    enum Slot { kR, kZ, kN, kRh, kSlots };
    static constexpr const char* kSlotNames[] = {"r", "z", "n", "rh"};

    // Forward phase 1 (gates 0 and 1 of `in`): r and z (kept for phase 2); returns r*h, what the W_hn
    // product reads.
    template <class M, class V, class In, class Ws>
    RNNFAST_HD static V gates(const In& in, V& z, const Ws& ws) {
        const V r = M::sigmoid(in.x(0) + in.h(0));
        z = M::sigmoid(in.x(1) + in.h(1));
        const V rh = r * in.h_read(2);
        ws.put(kR, r); ws.put(kZ, z); ws.put(kRh, rh);
        return rh;
    }
    // Forward phase 2, once in.h(2) = W_hn (r*h) + b_hn is known; z from phase 1. Returns h'.
    template <class M, class V, class In, class Ws>
    RNNFAST_HD static V output(const In& in, V z, const Ws& ws) {
        const V n = M::tanh(in.x(2) + in.h(2));
        ws.put(kN, n);
        return (M::c(1.0) - z) * n + z * in.h_prev();
    }
    // Backward phase 1, from dh (whole gradient w.r.t. h'): dz and dn (input and recurrent alike); returns
    // the direct part of the gradient w.r.t. h.
    template <class M, class V, class Sv, class Gr>
    RNNFAST_HD static V backward_output(const Sv& sv, V dh, const Gr& gr) {
        const V one = M::c(1.0);
        const V z = sv.get(kZ), n = sv.get(kN);
        gr.both(2, dh * (one - z) * (one - n * n));
        gr.both(1, dh * (sv.h_prev() - n) * z * (one - z));
        return dh * z;
    }
    // Backward phase 2, once drh = W_hn^T dn (gradient w.r.t. r*h) is known: dr; returns drh's share of dh.
    template <class M, class V, class Sv, class Gr>
    RNNFAST_HD static V backward_gates(const Sv& sv, V drh, const Gr& gr) {
        const V r = sv.get(kR);
        gr.both(0, drh * sv.h_read(2) * r * (M::c(1.0) - r));
        return drh * r * sv.drop(2);
    }
};

// What the bindings and Python need to know of a cell at run time, read from the traits above.
struct CellInfo {
    const char* name;
    int gates;
    int slots;                      // workspace slots per unit
    int proj_slots;                 // with an LSTM projection (0: the cell has none)
    const char* const* slot_names;  // max(slots, proj_slots) of them, in workspace order
    bool cell_state, recurrent_grads, reset_before_product;  // the traits' kCellState, ...
};

RNNFAST_HD constexpr CellInfo cell_info(int cell) {
    switch (cell) {
        case kRnnTanh: return {RnnTanh::kName, RnnTanh::kGates, RnnTanh::kSlots, 0, RnnTanh::kSlotNames,
                               RnnTanh::kCellState, RnnTanh::kRecurrentGrads, RnnTanh::kResetBeforeProduct};
        case kRnnRelu: return {RnnRelu::kName, RnnRelu::kGates, RnnRelu::kSlots, 0, RnnRelu::kSlotNames,
                               RnnRelu::kCellState, RnnRelu::kRecurrentGrads, RnnRelu::kResetBeforeProduct};
        case kLstm: return {Lstm::kName, Lstm::kGates, Lstm::slots(false), Lstm::slots(true), Lstm::kSlotNames,
                           Lstm::kCellState, Lstm::kRecurrentGrads, Lstm::kResetBeforeProduct};
        case kGru:
            return {Gru::kName, Gru::kGates, Gru::kSlots, 0, Gru::kSlotNames, Gru::kCellState, Gru::kRecurrentGrads,
                    Gru::kResetBeforeProduct};
        case kGruOriginal:
            return {GruOriginal::kName, GruOriginal::kGates, GruOriginal::kSlots, 0, GruOriginal::kSlotNames,
                    GruOriginal::kCellState, GruOriginal::kRecurrentGrads, GruOriginal::kResetBeforeProduct};
        default: return {nullptr, 0, 0, 0, nullptr, false, false, false};
    }
}

// Workspace slots per unit of a call: the cell's, or the LSTM's with its projection.
RNNFAST_HD constexpr int workspace_slots(int cell, bool projection) {
    return projection ? cell_info(cell).proj_slots : cell_info(cell).slots;
}

// Calls f(Cell{}) with the traits type of a single-phase cell id (the cells whose step is one product and
// one pointwise pass); returns false for the two-phase GRU original.
template <class F>
RNNFAST_HD bool with_single_phase_cell(int cell, F&& f) {
    switch (cell) {
        case kRnnTanh: f(RnnTanh{}); return true;
        case kRnnRelu: f(RnnRelu{}); return true;
        case kLstm: f(Lstm{}); return true;
        case kGru: f(Gru{}); return true;
        default: return false;
    }
}

}  // namespace rnnfast
