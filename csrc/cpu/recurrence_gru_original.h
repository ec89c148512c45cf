// recurrence_gru_original.h: the fused CPU recurrence of the original GRU (linear_before_reset=False),
// forward and BPTT backward. Tensors, packing and work split as in recurrence.h, except:
//   ws    [N, 4*H]   the slots of rnnfast::GruOriginal: r, z, n and r*h_{t-1} (what the W_hn product read)
//   dxg   [N, 3*H]   gradients of the pre-activations; the recurrent ones are the same (no separate dhg)
// The candidate needs r*h of every unit before its W_hn product, so a step has two phases and two barriers:
// forward   gates r, z (W_hr, W_hz h) -> barrier -> candidate (W_hn (r*h))
// backward  dn, dz -> barrier -> drh = W_hn^T dn, dr -> barrier -> dh += W_h[r,z]^T d[r,z]
// With recurrent dropout (rec_mask, h_drop as in recurrence.h) W_hr and W_hz read h under their masks (h_drop),
// the candidate's r*h reads h under its own (the cell's h_read), and each share of dh goes back under its mask.
#pragma once

#include "packing.h"
#include "skeleton.h"

namespace {

template <typename T>
void gru_original_forward(const FwdArgs<T>& a, int requested_threads) {
    using Cell = rnnfast::GruOriginal;
    constexpr int G = Cell::kGates, S = Cell::kSlots;
    const int H = a.H, B = a.B;
    const ptrdiff_t GH = static_cast<ptrdiff_t>(G) * H;
    const int nt = threads_for(requested_threads, B, G, H, Slice<T>::blocks(H));
    const Steps steps(a.batch_sizes, a.T_);
    const Biases<T> bias(a.b_ih, a.b_hh, G * H);
    AlignedVector<T> rh_all(static_cast<size_t>(B) * H);  // r*h of the step, every unit: what W_hn multiplies
    TeamScratch<T> scratch(static_cast<ptrdiff_t>(B) * G * Slice<T>::blocks(H) * Tile<T>::NR, nt);  // gate sums
    Bf16Product<T> bf16(a.w_hh_bf16, G, H, B, nt);

    run_team(nt, [&](int tid, int team, Barrier& barrier) {
        const Slice<T> s(H, tid, team);
        const ptrdiff_t ldc = static_cast<ptrdiff_t>(G) * s.width;
        T* acc = scratch.of(tid);
        for (int t = 0; t < a.T_; ++t) {
            const int Bt = steps.rows(t);
            const T* h_prev = t == 0 ? a.h0 : a.y + steps.row(t - 1, 0) * H;
            if (bf16)
                bf16(tid, s, 0, 2, h_prev, H, Bt, acc, ldc);
            else if (a.rec_mask)
                forward_product(a.w_hh, G, H, s, 0, 2, dropped_prev(a, steps, t, GH), GH, Bt, 0, H, acc, ldc, false,
                                1 << 30, false, H);
            else
                forward_product(a.w_hh, G, H, s, 0, 2, h_prev, H, Bt, 0, H, acc, ldc, false);
            walk_forward<T, G>(a, steps, t, s, bias, acc, ldc, h_prev, S, [&](const auto& in, const auto& ws, int b,
                                                                              int u, int col) {
                using V = ValueOf<decltype(in)>;
                V z;
                st(rh_all.data() + static_cast<ptrdiff_t>(b) * H + u, Cell::gates<MathFor<T, decltype(in)>, V>(in, z, ws));
                st(acc + b * ldc + s.width + col, z);  // z waits for phase 2 in its consumed gate sum
            });
            barrier.wait(tid);
            if (bf16)
                bf16(tid, s, 2, 3, rh_all.data(), H, Bt, acc + 2 * s.width, ldc);
            else
                forward_product(a.w_hh, G, H, s, 2, 3, rh_all.data(), H, Bt, 0, H, acc + 2 * s.width, ldc, false);
            walk_forward<T, G>(a, steps, t, s, bias, acc, ldc, h_prev, S, [&](const auto& in, const auto& ws, int b,
                                                                              int u, int col) {
                using V = ValueOf<decltype(in)>;
                const V z = ld<V>(acc + b * ldc + s.width + col);
                const ptrdiff_t row = steps.row(t, b);
                const V h = Cell::output<MathFor<T, decltype(in)>, V>(in, z, ws);
                st(a.y + row * H + u, h);
                if (a.rec_mask) put_dropped(a, G, row, b, u, h);
            });
            barrier.wait(tid);
        }
        copy_final_states(a, steps, H, s.lo, s.hi);
    });
}

template <typename T>
void gru_original_backward(const BwdArgs<T>& a, int requested_threads) {
    using Cell = rnnfast::GruOriginal;
    constexpr int G = Cell::kGates, S = Cell::kSlots;
    const int H = a.H, B = a.B;
    const ptrdiff_t GH = static_cast<ptrdiff_t>(G) * H;
    const int nt = threads_for(requested_threads, B, G, H, Slice<T>::blocks(H));
    const Steps steps(a.batch_sizes, a.T_);
    // Per thread: the dh carry and drh = W_hn^T dn, [B][width] each (and one gate's product with dropout).
    TeamScratch<T> scratch((a.rec_mask ? 3 : 2) * static_cast<ptrdiff_t>(B) * Slice<T>::blocks(H) * Tile<T>::NR, nt);
    BiasSums<T> sums(GH, nullptr);

    run_team(nt, [&](int tid, int team, Barrier& barrier) {
        const Slice<T> s(H, tid, team);
        T* dhr = scratch.of(tid);
        T* drh = dhr + static_cast<ptrdiff_t>(B) * s.width;
        T* dgate = drh + static_cast<ptrdiff_t>(B) * s.width;  // recurrent dropout only
        load_carry(dhr, a.dh_n, B, H, s);
        for (int t = a.T_ - 1; t >= 0; --t) {
            const int Bt = steps.rows(t);
            walk_backward<T, G>(a, steps, t, s, S, nullptr, true, [&](const auto& sv, const auto& gr, int b, int u,
                                                                      int col) {
                using V = ValueOf<decltype(sv)>;
                const V dh = dh_total<V>(a, steps.row(t, b), u, dhr + col);
                st(dhr + col, Cell::backward_output<MathFor<T, decltype(sv)>, V>(sv, dh, gr));
            });
            barrier.wait(tid);
            const T* dg = a.dxg + steps.row(t, 0) * GH;
            backward_product(a.w_hh, GH, s, dg, GH, 2 * H, H, Bt, drh, s.width, false);  // W_hn^T dn
            walk_backward<T, G>(a, steps, t, s, S, nullptr, true, [&](const auto& sv, const auto& gr, int, int,
                                                                      int col) {
                using V = ValueOf<decltype(sv)>;
                const V drh_c = ld<V>(drh + col);
                st(dhr + col, ld<V>(dhr + col) + Cell::backward_gates<MathFor<T, decltype(sv)>, V>(sv, drh_c, gr));
            });
            sums.template add_step<G>(a, steps, t, s);
            barrier.wait(tid);
            if (a.rec_mask)  // + W_h[r,z]^T d[r,z], each under its mask
                masked_backward_products(a.w_hh, GH, s, dg, 2, H, Bt, a.rec_mask, dgate, dhr);
            else
                backward_product(a.w_hh, GH, s, dg, GH, 0, 2 * H, Bt, dhr, s.width, true);  // + W_h[r,z]^T d[r,z]
        }
        store_carry(a.dh0, dhr, B, H, s);
        sums.flush(a, G, s);
    });
}

}  // namespace
