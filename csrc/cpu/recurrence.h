// recurrence.h: the fused CPU recurrence of the single-phase cells (RNN tanh/relu, LSTM, GRU), forward and
// BPTT backward, templated on the cell's traits (csrc/common/cells.h).
//
// One call runs all T steps of one layer, one direction. Sequences of different lengths are packed as in
// a torch PackedSequence: step t has batch_sizes[t] active batch rows (non-increasing in t: rows sorted by
// length, longest first), and per-token tensors hold the active rows of step 0, then those of step 1, ...:
// N = sum(batch_sizes) rows, row(t, b) = off[t] + b with off[t] = batch_sizes[0] + ... + batch_sizes[t-1]. A
// full-length batch is batch_sizes[t] = B, which is the plain [T, B, ...] layout. Padded steps cost nothing.
// Tensors (row-major):
//   batch_sizes [T]     active rows per step; B = batch_sizes[0]
//   xp    [N, G*H]      W_ih x_t for every token (no bias: the kernel adds b_ih)
//   h0    [B, H]        initial hidden state;  c0 [B, H] initial cell state (LSTM)
//   w_hh  W_hh packed, in a forward call for the forward product, panels (unit block, gate): see packing.h (or
//         null and w_hh_bf16, the same panels in bf16 pairs: inference with bfloat16 weights, gemm_bf16.h); in
//         a backward call for the backward product, panels (unit block): see packing.h
//   b_ih, b_hh [G*H] or null
//   y     [N, H]        outputs h_t (also the h_{t-1} that the next step reads)
//   h_n, c_n [B, H]     final states: each row's state after its own last step
//   ws    [N, S*H]      training workspace, or null in inference: the cell's slots (Cell::Slot), S of them
// Backward:
//   dy    [N, H] or null; dh_n, dc_n [B, H] or null (gradients w.r.t. h_n and c_n)
//   dxg   [N, G*H]      gradient w.r.t. the input pre-activations (W_ih x + b_ih)
//   dhg   [N, G*H]      gradient w.r.t. the recurrent pre-activations (W_hh h + b_hh); GRU only, for the
//                       other cells it is dxg itself
//   dh0, dc0 [B, H]; db_ih, db_hh [G*H] accumulated (+=) when not null
//
// Work split (skeleton.h): each thread owns a run of unit blocks, computes all gates of its units (recurrent
// GEMM fused with the cell), and the threads meet at one barrier per step, whose latency the forward hides
// behind the product of its own units. Backward splits the columns of W_hh the same way
// (dh_{t-1} = dhg_t W_hh). Results are identical from run to run with the same thread count.
#pragma once

#include "packing.h"
#include "skeleton.h"

namespace {

// h_{t-1} W_hh^T for a thread's units, the product of a single-phase forward step, each unit's sum in the order
// of the nominal slice that owns it. Where a slice's weights stay in L1, its own units of h_{t-1} come first,
// multiplied while the other threads finish theirs, then the rest (measured here: LSTM H=64 B=1 gains 2.4x from
// it at two threads, while H=256, weights streamed from L2, loses 30%); else all of h_{t-1} after the crossing.
// Step 0 reads h0, which is whole: no split. A team smaller than the nominal split (a slow crossing, nested
// parallelism) runs each nominal slice it holds in turn, in the same order: results are identical run to run
// for a thread count asked for, not across thread counts. Called by every thread every step: forced inline, its
// lambdas too (else GCC calls them, and the cell walk beside it loses inlined vector math: measured on the code).
template <typename T>
struct SplitProduct {
    const T* w_hh;
    int G, H;
    const Slice<T>& s;                     // the thread's units
    const std::vector<Slice<T>>& nominal;  // the split that fixes the order of the sums
    T* acc;                                // gate sums [rows][G][s.width], row stride ldc
    ptrdiff_t ldc;
    Barrier& barrier;
    int tid;

    // Waits for the crossing `epoch` (h_{t-1} complete) as late as the split allows. src: h_{t-1} (row stride
    // ld), gate g's at src + g*gstride (recurrent dropout; else gstride 0).
    inline __attribute__((always_inline)) void operator()(const T* src, ptrdiff_t ld, ptrdiff_t gstride, int Bt,
                                                          bool first_step, uint64_t epoch) const {
        bool waited = first_step;
        auto wait = [&]() __attribute__((always_inline)) {
            if (!waited) barrier.wait_for(tid, epoch);
            waited = true;
        };
        for (const Slice<T>& nv : nominal) {
            Slice<T> sub = s;
            sub.b0 = std::max(s.b0, nv.b0);
            sub.b1 = std::min(s.b1, nv.b1);
            if (sub.b0 >= sub.b1) continue;
            T* c = acc + (sub.b0 - s.b0) * Tile<T>::NR;
            const bool in_l1 = static_cast<size_t>(G) * nv.width * H * sizeof(T) <= kL1Bytes;
            auto part = [&](int k0, int k1, bool accumulate) __attribute__((always_inline)) {
                forward_product(w_hh, G, H, sub, 0, G, src, ld, Bt, k0, k1, c, ldc, accumulate, 1 << 30, in_l1,
                                gstride);
            };
            if (!first_step && in_l1) {
                part(nv.lo, nv.hi, false);
                wait();
                part(0, nv.lo, true);
                part(nv.hi, H, true);
            } else {
                wait();
                part(0, H, false);
            }
        }
        wait();
    }
};

template <class Cell, typename T>
void recurrence_forward(const FwdArgs<T>& a, int requested_threads) {
    constexpr int G = Cell::kGates, S = Cell::kSlots;
    constexpr bool kCellState = std::is_same<Cell, rnnfast::Lstm>::value;
    const int H = a.H, B = a.B;
    const ptrdiff_t GH = static_cast<ptrdiff_t>(G) * H;
    // The split that fixes each sum's order (`nominal`, from the thread count and the shape alone) and the team
    // that runs it (`nt`: fewer threads where the measured crossing is slow or the process's teams are starved).
    // So the bits never depend on how slow the crossing was, nor on the machine's load, only on the thread count
    // asked for.
    const int nominal = nominal_threads(requested_threads, B, G, H, Slice<T>::blocks(H));
    const int nt = std::min(nominal, threads_for(requested_threads, B, G, H, Slice<T>::blocks(H)));
    const Steps steps(a.batch_sizes, a.T_);
    const Biases<T> bias(a.b_ih, a.b_hh, G * H);
    // Per thread: gate sums [B][G][width] and, for the LSTM, the cell state [B][width].
    TeamScratch<T> scratch(static_cast<ptrdiff_t>(B) * (G + kCellState) * Slice<T>::blocks(H) * Tile<T>::NR, nt);
    Bf16Product<T> bf16(a.w_hh_bf16, G, H, B, nt);
    std::vector<Slice<T>> nominal_slices;  // computed once: the product walks them every step
    for (int v = 0; v < nominal; ++v) nominal_slices.emplace_back(H, v, nominal);

    run_team(nt, [&](int tid, int team, Barrier& barrier) {
        const Slice<T> s(H, tid, team);
        const ptrdiff_t ldc = static_cast<ptrdiff_t>(G) * s.width;
        T* acc = scratch.of(tid);
        T* cst = acc + B * ldc;
        if (kCellState) load_carry(cst, a.c0, B, H, s);
        const SplitProduct<T> product{a.w_hh, G, H, s, nominal_slices, acc, ldc, barrier, tid};
        uint64_t epoch = 0;
        for (int t = 0; t < a.T_; ++t) {
            const int Bt = steps.rows(t);
            // Step t-1's rows come first in the same order, so its first Bt rows are this step's h_{t-1}.
            const T* h_prev = t == 0 ? a.h0 : a.y + steps.row(t - 1, 0) * H;
            if (bf16) {  // the state is rounded whole, once it is complete: no split (Bf16Product)
                if (t > 0) barrier.wait_for(tid, epoch);
                bf16(tid, s, 0, G, h_prev, H, Bt, acc, ldc);
            } else if (a.rec_mask) {  // each gate reads h_{t-1} under its own mask, as the previous step left it
                product(dropped_prev(a, steps, t, GH), GH, H, Bt, t == 0, epoch);
            } else {
                product(h_prev, H, 0, Bt, t == 0, epoch);
            }
            walk_forward<T, G>(a, steps, t, s, bias, acc, ldc, h_prev, S, [&](const auto& in, const auto& ws, int b,
                                                                              int u, int col) {
                using V = ValueOf<decltype(in)>;
                V c = kCellState ? ld<V>(cst + b * s.width + col) : V{};
                const ptrdiff_t row = steps.row(t, b);
                const V h = Cell::template forward<MathFor<T, decltype(in)>, V>(in, c, ws);
                st(a.y + row * H + u, h);
                if (kCellState) st(cst + b * s.width + col, c);
                if (a.rec_mask) put_dropped(a, G, row, b, u, h);
            });
            epoch = barrier.arrive(tid);
        }
        barrier.wait_for(tid, epoch);
        copy_final_states(a, steps, H, s.lo, s.hi);
        if (kCellState) store_carry(a.c_n, cst, B, H, s);
    });
}

template <class Cell, typename T>
void recurrence_backward(const BwdArgs<T>& a, int requested_threads) {
    constexpr int G = Cell::kGates, S = Cell::kSlots, NR = Tile<T>::NR;
    constexpr bool kCellState = std::is_same<Cell, rnnfast::Lstm>::value;
    const int H = a.H, B = a.B;
    const ptrdiff_t GH = static_cast<ptrdiff_t>(G) * H;
    const int nt = threads_for(requested_threads, B, G, H, Slice<T>::blocks(H));
    const Steps steps(a.batch_sizes, a.T_);
    T* const dhg_all = std::is_same<Cell, rnnfast::Gru>::value ? a.dhg : nullptr;  // else the product reads dxg
    // Per thread: the dh and dc carries [B][width], and with recurrent dropout one gate's product [B][width].
    const ptrdiff_t carry = static_cast<ptrdiff_t>(B) * Slice<T>::blocks(H) * NR;
    TeamScratch<T> scratch((a.rec_mask ? 3 : 2) * carry, nt);
    BiasSums<T> sums(GH, dhg_all);

    run_team(nt, [&](int tid, int team, Barrier& barrier) {
        const Slice<T> s(H, tid, team);
        T* dhr = scratch.of(tid);
        T* dcs = dhr + static_cast<ptrdiff_t>(B) * s.width;
        T* dgate = dcs + static_cast<ptrdiff_t>(B) * s.width;  // recurrent dropout only
        // A row's carries start at dh_n / dc_n and wait untouched until its own last step comes up.
        load_carry(dhr, a.dh_n, B, H, s);
        load_carry(dcs, a.dc_n, B, H, s);
        for (int t = a.T_ - 1; t >= 0; --t) {
            const int Bt = steps.rows(t);
            walk_backward<T, G>(a, steps, t, s, S, dhg_all, true, [&](const auto& sv, const auto& gr, int b, int u,
                                                                      int col) {
                using V = ValueOf<decltype(sv)>;
                const V dh = dh_total<V>(a, steps.row(t, b), u, dhr + col);
                V dc = kCellState ? ld<V>(dcs + col) : V{};
                st(dhr + col, Cell::template backward<MathFor<T, decltype(sv)>, V>(sv, dh, dc, gr));
                if (kCellState) st(dcs + col, dc);
            });
            sums.template add_step<G>(a, steps, t, s);
            barrier.wait(tid);
            // dh_{t-1}[:, own units] += dg_t W_hh[:, own units], each gate's share under its mask with dropout
            const T* dg = (dhg_all ? dhg_all : a.dxg) + steps.row(t, 0) * GH;
            if (a.rec_mask)
                masked_backward_products(a.w_hh, GH, s, dg, G, H, Bt, a.rec_mask, dgate, dhr);
            else
                backward_product(a.w_hh, GH, s, dg, GH, 0, GH, Bt, dhr, s.width, true);
        }
        store_carry(a.dh0, dhr, B, H, s);
        if (kCellState && a.dc0) store_carry(a.dc0, dcs, B, H, s);
        sums.flush(a, G, s);
    });
}

}  // namespace
