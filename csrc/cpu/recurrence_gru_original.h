// recurrence_gru_original.h: the fused CPU recurrence of the original GRU (linear_before_reset=False),
// forward and BPTT backward. Tensors, packing and work split as in recurrence.h, except:
//   ws    [N, 4*H]   the slots of rnnfast::GruOriginal: r, z, n and r*h_{t-1} (what the W_hn product read)
//   dxg   [N, 3*H]   gradients of the pre-activations; the recurrent ones are the same (no separate dhg)
// The candidate needs r*h of every unit before its W_hn product, so a step has two phases and two barriers:
// forward   gates r, z (W_hr, W_hz h) -> barrier -> candidate (W_hn (r*h))
// backward  dn, dz -> barrier -> drh = W_hn^T dn, dr -> barrier -> dh += W_h[r,z]^T d[r,z]
#pragma once

#include "packing.h"
#include "skeleton.h"

namespace {

template <typename T>
void gru_original_forward(const FwdArgs<T>& a, int requested_threads) {
    using Cell = rnnfast::GruOriginal;
    constexpr int G = Cell::kGates, S = Cell::kSlots;
    const int H = a.H, B = a.B;
    const int nt = threads_for(requested_threads, B, G, H, Slice<T>::blocks(H));
    const Steps steps(a.bs, a.T_);
    const Biases<T> bias(a.b_ih, a.b_hh, G * H);
    std::vector<T> rh_all(static_cast<size_t>(B) * H);  // r*h of the step, every unit: what W_hn multiplies
    TeamScratch<T> scratch(static_cast<ptrdiff_t>(B) * G * Slice<T>::blocks(H) * Tile<T>::NR, nt);  // gate sums

    run_team(nt, [&](int tid, int team, Barrier& barrier) {
        const Slice<T> s(H, tid, team);
        const ptrdiff_t ldc = static_cast<ptrdiff_t>(G) * s.width;
        T* acc = scratch.of(tid);
        // Both phases walk the step's rows and units with the same inputs; only the cell function differs.
        auto pointwise = [&](int t, const T* h_prev, auto phase) {
            for (int b = 0; b < steps.rows(t); ++b) {
                const ptrdiff_t row = steps.row(t, b);
                T* ws = a.ws ? a.ws + row * S * H : nullptr;
                for_each_unit<T>(s.lo, s.hi, [&](auto v, int u) {
                    using V = decltype(v);
                    const In<T, V> in{a.xp + row * G * H + u, bias.ih + u, acc + b * ldc + u - s.lo, bias.hh + u,
                                      h_prev + static_cast<ptrdiff_t>(b) * H + u, H, s.width};
                    phase(in, WsOut<T, V>{ws ? ws + u : nullptr, H}, b, u, MathOf<T, V>{});
                });
            }
        };
        for (int t = 0; t < a.T_; ++t) {
            const int Bt = steps.rows(t);
            const T* h_prev = t == 0 ? a.h0 : a.y + steps.row(t - 1, 0) * H;
            forward_product(a.wf, G, H, s, 0, 2, h_prev, H, Bt, 0, H, acc, ldc, false);
            pointwise(t, h_prev, [&](const auto& in, const auto& ws, int b, int u, auto m) {
                using V = decltype(in.h_prev());
                V z;
                st(rh_all.data() + static_cast<ptrdiff_t>(b) * H + u, Cell::gates<decltype(m), V>(in, z, ws));
                st(acc + b * ldc + s.width + u - s.lo, z);  // z waits for phase 2 in its consumed gate sum
            });
            barrier.wait(tid);
            forward_product(a.wf, G, H, s, 2, 3, rh_all.data(), H, Bt, 0, H, acc + 2 * s.width, ldc, false);
            pointwise(t, h_prev, [&](const auto& in, const auto& ws, int b, int u, auto m) {
                using V = decltype(in.h_prev());
                const V z = ld<V>(acc + b * ldc + s.width + u - s.lo);
                st(a.y + steps.row(t, b) * H + u, Cell::output<decltype(m), V>(in, z, ws));
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
    const Steps steps(a.bs, a.T_);
    // Per thread: the dh carry and drh = W_hn^T dn, [B][width] each.
    TeamScratch<T> scratch(2 * static_cast<ptrdiff_t>(B) * Slice<T>::blocks(H) * Tile<T>::NR, nt);
    BiasSums<T> sums(GH);

    run_team(nt, [&](int tid, int team, Barrier& barrier) {
        const Slice<T> s(H, tid, team);
        T* dhr = scratch.of(tid);
        T* drh = dhr + static_cast<ptrdiff_t>(B) * s.width;
        load_carry(dhr, a.dh_n, B, H, s);
        auto pointwise = [&](int t, auto phase) {
            for (int b = 0; b < steps.rows(t); ++b) {
                const ptrdiff_t row = steps.row(t, b);
                const T* hp = t == 0 ? a.h0 + static_cast<ptrdiff_t>(b) * H : a.y + steps.row(t - 1, b) * H;
                for_each_unit<T>(s.lo, s.hi, [&](auto v, int u) {
                    using V = decltype(v);
                    const Saved<T, V> sv{a.ws + row * S * H + u, nullptr, nullptr, hp + u, nullptr, H};
                    const Grads<T, V> gr{a.dxg + row * GH + u, nullptr, sums.ih.data() + u, sums.hh.data() + u, H};
                    phase(sv, gr, row, b * s.width + u - s.lo, u, MathOf<T, V>{});
                });
            }
        };
        for (int t = a.T_ - 1; t >= 0; --t) {
            const int Bt = steps.rows(t);
            pointwise(t, [&](const auto& sv, const auto& gr, ptrdiff_t row, int col, int u, auto m) {
                using V = decltype(sv.h_prev());
                V dh = ld<V>(dhr + col);
                if (a.dy) dh = dh + ld<V>(a.dy + row * H + u);
                st(dhr + col, Cell::backward_output<decltype(m), V>(sv, dh, gr));
            });
            barrier.wait(tid);
            const T* dg = a.dxg + steps.row(t, 0) * GH;
            backward_product(a.wb, GH, s, dg, GH, 2 * H, H, Bt, drh, s.width, false);  // W_hn^T dn
            pointwise(t, [&](const auto& sv, const auto& gr, ptrdiff_t, int col, int, auto m) {
                using V = decltype(sv.h_prev());
                st(dhr + col, ld<V>(dhr + col) + Cell::backward_gates<decltype(m), V>(sv, ld<V>(drh + col), gr));
            });
            barrier.wait(tid);
            backward_product(a.wb, GH, s, dg, GH, 0, 2 * H, Bt, dhr, s.width, true);  // + W_h[r,z]^T d[r,z]
        }
        store_carry(a.dh0, dhr, B, H, s);
        sums.flush(a, G, s);
    });
}

}  // namespace
