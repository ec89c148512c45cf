// recurrence_lstm_proj.h: the fused CPU recurrence of an LSTM with a projection (torch's proj_size = P),
// forward and BPTT backward. h' = W_hr (o*tanh(c')): the state h has P features, the cell c has H.
// Tensors as in recurrence.h, except:
//   h0, y, h_n [., P]    c0, c_n [B, H]
//   wf         W_hh (4H, P) packed forward (K = P);  wb: W_hh packed backward (panels over P, K = 4H)
//   wr         W_hr (P, H) packed forward (panels over P, K = H) / backward (panels over H, K = P)
//   ws  [N, 6*H]   rnnfast::Lstm's slots with its projection: i, f, g, o, c_t and m_t = o*tanh(c_t)
//   dh_all [N, P]  gradient w.r.t. every h_t (dy plus what flows back from t+1): what dW_hr needs
// A step has two phases and two barriers:
// forward   gates and m for the thread's units -> barrier -> h = W_hr m for its slice of P -> barrier
// backward  dm = dh W_hr and the cell for its units -> barrier -> dh_{t-1} = dg W_hh for its slice of P,
//           plus dy_{t-1} -> barrier
#pragma once

#include "packing.h"
#include "skeleton.h"

namespace {

template <typename T>
void lstm_proj_forward(const FwdArgs<T>& a, int requested_threads) {
    using Cell = rnnfast::Lstm;
    constexpr int G = Cell::kGates, S = Cell::slots(true);
    const int H = a.H, P = a.P, B = a.B;
    const int nt = threads_for(requested_threads, B, G, std::max(H, P),
                               std::min(Slice<T>::blocks(H), Slice<T>::blocks(P)));
    const Steps steps(a.batch_sizes, a.T_);
    const Biases<T> bias(a.b_ih, a.b_hh, G * H);
    AlignedVector<T> m_all(static_cast<size_t>(B) * H);  // m_t of the step, every unit: what W_hr multiplies
    // Per thread: gate sums [B][G][width] and the cell state [B][width].
    TeamScratch<T> scratch(static_cast<ptrdiff_t>(B) * (G + 1) * Slice<T>::blocks(H) * Tile<T>::NR, nt);
    Bf16Product<T> bf16(a.w_hh_bf16, G, P, B, nt);  // W_hh only: W_hr stays float32

    run_team(nt, [&](int tid, int team, Barrier& barrier) {
        const Slice<T> s(H, tid, team), sp(P, tid, team);
        const ptrdiff_t ldc = static_cast<ptrdiff_t>(G) * s.width;
        T* acc = scratch.of(tid);
        T* cst = acc + B * ldc;
        load_carry(cst, a.c0, B, H, s);
        for (int t = 0; t < a.T_; ++t) {
            const int Bt = steps.rows(t);
            const T* h_prev = t == 0 ? a.h0 : a.y + steps.row(t - 1, 0) * P;
            if (bf16)
                bf16(tid, s, 0, G, h_prev, P, Bt, acc, ldc);
            else
                forward_product(a.w_hh, G, P, s, 0, G, h_prev, P, Bt, 0, P, acc, ldc, false);
            walk_forward<T, G>(a, steps, t, s, bias, acc, ldc, nullptr, S, [&](const auto& in, const auto& ws, int b,
                                                                              int u, int col) {
                using V = ValueOf<decltype(in)>;
                V c = ld<V>(cst + b * s.width + col);
                const V m = Cell::forward<MathFor<T, decltype(in)>, V>(in, c, ws);
                ws.put(Cell::kM, m);
                st(cst + b * s.width + col, c);
                st(m_all.data() + static_cast<ptrdiff_t>(b) * H + u, m);
            });
            barrier.wait(tid);
            // h_t = m_t W_hr^T for the thread's slice of P, written straight into y (from its column sp.lo:
            // forward_product writes the slice's first block at acc).
            forward_product(a.w_hr, 1, H, sp, 0, 1, m_all.data(), H, Bt, 0, H, a.y + steps.row(t, 0) * P + sp.lo, P,
                            false, P);
            barrier.wait(tid);
        }
        copy_final_states(a, steps, P, sp.lo, sp.hi);
        store_carry(a.c_n, cst, B, H, s);
    });
}

template <typename T>
void lstm_proj_backward(const BwdArgs<T>& a, int requested_threads) {
    using Cell = rnnfast::Lstm;
    constexpr int G = Cell::kGates, S = Cell::slots(true);
    const int H = a.H, P = a.P, B = a.B;
    const ptrdiff_t GH = static_cast<ptrdiff_t>(G) * H;
    const int nt = threads_for(requested_threads, B, G, std::max(H, P),
                               std::min(Slice<T>::blocks(H), Slice<T>::blocks(P)));
    const Steps steps(a.batch_sizes, a.T_);
    // Per thread: the dh carry [B][width over P], dm and the dc carry [B][width over H].
    TeamScratch<T> scratch(static_cast<ptrdiff_t>(B) * (Slice<T>::blocks(P) + 2 * Slice<T>::blocks(H)) * Tile<T>::NR,
                           nt);
    BiasSums<T> sums(GH, nullptr);

    run_team(nt, [&](int tid, int team, Barrier& barrier) {
        const Slice<T> s(H, tid, team), sp(P, tid, team);
        T* dhr = scratch.of(tid);
        T* dm = dhr + static_cast<ptrdiff_t>(B) * sp.width;
        T* dcs = dm + static_cast<ptrdiff_t>(B) * s.width;
        load_carry(dhr, a.dh_n, B, P, sp);
        load_carry(dcs, a.dc_n, B, H, s);
        // dh_all rows of step t for the thread's slice of P: dy + the carry (dh_n, or what step t+1 sent).
        auto assemble = [&](int t) {
            for (int b = 0; b < steps.rows(t); ++b) {
                const ptrdiff_t row = steps.row(t, b);
                for (int p = sp.lo; p < sp.hi; ++p)
                    a.dh_all[row * P + p] = dhr[b * sp.width + p - sp.lo] + (a.dy ? a.dy[row * P + p] : T(0));
            }
        };
        if (a.T_ > 0) assemble(a.T_ - 1);
        barrier.wait(tid);
        for (int t = a.T_ - 1; t >= 0; --t) {
            const int Bt = steps.rows(t);
            // dm = dh_t W_hr for the thread's units.
            backward_product(a.w_hr, P, s, a.dh_all + steps.row(t, 0) * P, P, 0, P, Bt, dm, s.width, false);
            walk_backward<T, G>(a, steps, t, s, S, nullptr, false, [&](const auto& sv, const auto& gr, int, int,
                                                                      int col) {
                using V = ValueOf<decltype(sv)>;
                V dc = ld<V>(dcs + col);
                Cell::backward<MathFor<T, decltype(sv)>, V>(sv, ld<V>(dm + col), dc, gr);
                st(dcs + col, dc);
            });
            sums.template add_step<G>(a, steps, t, s);
            barrier.wait(tid);
            // dh_{t-1} = dg_t W_hh for the thread's slice of P, then the rows of step t-1 are assembled.
            backward_product(a.w_hh, GH, sp, a.dxg + steps.row(t, 0) * GH, GH, 0, GH, Bt, dhr, sp.width, false);
            if (t > 0) assemble(t - 1);
            barrier.wait(tid);
        }
        store_carry(a.dh0, dhr, B, P, sp);
        if (a.dc0) store_carry(a.dc0, dcs, B, H, s);
        sums.flush(a, G, s);
    });
}

}  // namespace
