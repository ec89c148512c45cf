// recurrence_gru_original.h: the fused CPU recurrence of the original GRU (linear_before_reset=False),
// forward and BPTT backward. Same tensors, packing and work split as recurrence.h, with these differences:
//   ws    [N, 4*H]   r, z, n, r*h_{t-1} per unit (r*h is what the W_hn product read; dW_hn pairs with it)
//   dxg   [N, 3*H]   gradients of the pre-activations; the recurrent ones are the same (no separate dhg)
// The candidate needs r*h of every unit before its W_hn product, so a step has two phases and two
// barriers, forward (gates r, z -> barrier -> candidate) and backward (dn, dz -> barrier -> W_hn^T dn,
// dr -> barrier -> W_h[r,z]^T d[r,z]).
#pragma once

#include "recurrence.h"

namespace {

template <typename T>
void gru_original_forward(const FwdArgs<T>& a, int requested_threads) {
    constexpr int NR = Tile<T>::NR, MR = Tile<T>::MR;
    const int H = a.H, B = a.B;
    const ptrdiff_t GH = 3 * static_cast<ptrdiff_t>(H);
    const int nub = static_cast<int>(round_up(H, NR) / NR);
    const int nt = threads_for(requested_threads, B, 3, H, nub);
    const std::vector<ptrdiff_t> off = offsets_of(a.bs, a.T_);
    std::vector<T> zeros(static_cast<size_t>(GH), T(0));
    const T* bi = a.b_ih ? a.b_ih : zeros.data();
    const T* bh = a.b_hh ? a.b_hh : zeros.data();
    // Shared: r*h of the step [B][H]. Per thread: accumulators [B][3][nup].
    std::vector<T> rh_all(static_cast<size_t>(B) * H);
    const ptrdiff_t per_thread = static_cast<ptrdiff_t>(B) * 3 * nub * NR;
    std::vector<T> scratch(static_cast<size_t>(per_thread) * nt);

    run_team(nt, [&](int tid, int team, Barrier& barrier) {
        const int ub0 = nub * tid / team, ub1 = nub * (tid + 1) / team;
        const int u0 = ub0 * NR, u1 = std::min(H, ub1 * NR), nup = (ub1 - ub0) * NR;
        const ptrdiff_t ldc = 3 * static_cast<ptrdiff_t>(nup);
        T* acc = scratch.data() + per_thread * tid;
        auto product = [&](int g, const T* src, int Bt) {  // acc[:, g] = src W_h[g]^T for the own units
            for (int ub = ub0; ub < ub1; ++ub) {
                const T* panel = a.wf + static_cast<ptrdiff_t>(ub * 3 + g) * H * NR;
                T* c = acc + g * nup + (ub - ub0) * NR;
                for (int b = 0; b < Bt; b += MR)
                    ukernel<T>(std::min(MR, Bt - b), H, src + static_cast<ptrdiff_t>(b) * H, H, 1, panel, c + b * ldc,
                               ldc, NR, false);
            }
        };
        for (int t = 0; t < a.T_; ++t) {
            const int Bt = static_cast<int>(a.bs[t]);
            const T* h_prev = t == 0 ? a.h0 : a.y + off[t - 1] * H;
            product(0, h_prev, Bt);
            product(1, h_prev, Bt);
            for (int b = 0; b < Bt; ++b) {
                const ptrdiff_t row = off[t] + b;
                const T* xp = a.xp + row * GH;
                const T* ac = acc + b * ldc;
                const T* hp = h_prev + static_cast<ptrdiff_t>(b) * H;
                T* ws = a.ws ? a.ws + row * 4 * H : nullptr;
                auto unit = [&](auto tag, int u) {
                    using V = decltype(tag);
                    using M = MathOf<T, V>;
                    const int col = u - u0;
                    V r, z, rh;
                    gru_original_gates<M>(ld<V>(xp + u) + ld<V>(bi + u), ld<V>(xp + H + u) + ld<V>(bi + H + u),
                                          ld<V>(ac + col) + ld<V>(bh + u), ld<V>(ac + nup + col) + ld<V>(bh + H + u),
                                          ld<V>(hp + u), r, z, rh);
                    st(rh_all.data() + static_cast<ptrdiff_t>(b) * H + u, rh);
                    st(acc + b * ldc + nup + col, z);  // keep z for phase 2 in its (consumed) accumulator slot
                    if (ws) { st(ws + u, r); st(ws + H + u, z); st(ws + 3 * H + u, rh); }
                };
                for_each_unit<T>(u0, u1, unit);
            }
            barrier.wait(tid);
            product(2, rh_all.data(), Bt);
            for (int b = 0; b < Bt; ++b) {
                const ptrdiff_t row = off[t] + b;
                const T* xp = a.xp + row * GH;
                const T* ac = acc + b * ldc;
                const T* hp = h_prev + static_cast<ptrdiff_t>(b) * H;
                T* y = a.y + row * H;
                T* ws = a.ws ? a.ws + row * 4 * H : nullptr;
                auto unit = [&](auto tag, int u) {
                    using V = decltype(tag);
                    using M = MathOf<T, V>;
                    const int col = u - u0;
                    V n;
                    const V h = gru_original_output<M>(ld<V>(xp + 2 * H + u) + ld<V>(bi + 2 * H + u),
                                                       ld<V>(ac + 2 * nup + col) + ld<V>(bh + 2 * H + u),
                                                       ld<V>(ac + nup + col), ld<V>(hp + u), n);
                    st(y + u, h);
                    if (ws) st(ws + 2 * H + u, n);
                };
                for_each_unit<T>(u0, u1, unit);
            }
            barrier.wait(tid);
        }
        copy_final_states(a, off, H, u0, u1);
    });
}

template <typename T>
void gru_original_backward(const BwdArgs<T>& a, int requested_threads) {
    constexpr int NR = Tile<T>::NR, MR = Tile<T>::MR;
    const int H = a.H, B = a.B;
    const ptrdiff_t GH = 3 * static_cast<ptrdiff_t>(H);
    const int nub = static_cast<int>(round_up(H, NR) / NR);
    const int nt = threads_for(requested_threads, B, 3, H, nub);
    const std::vector<ptrdiff_t> off = offsets_of(a.bs, a.T_);
    // Per thread: dh carry [B][nup] and W_hn^T dn [B][nup]. Bias sums for all 3H (own units only).
    const ptrdiff_t per_thread = 2 * static_cast<ptrdiff_t>(B) * nub * NR;
    std::vector<T> scratch(static_cast<size_t>(per_thread) * nt);
    std::vector<T> sums(static_cast<size_t>(GH), T(0));

    run_team(nt, [&](int tid, int team, Barrier& barrier) {
        const int ub0 = nub * tid / team, ub1 = nub * (tid + 1) / team;
        const int u0 = ub0 * NR, u1 = std::min(H, ub1 * NR), nup = (ub1 - ub0) * NR;
        T* dhr = scratch.data() + per_thread * tid;
        T* drh = dhr + static_cast<ptrdiff_t>(B) * nup;
        for (int b = 0; b < B; ++b)
            for (int j = 0; j < nup; ++j) {
                const int u = u0 + j;
                dhr[b * nup + j] = (a.dh_n && u < u1) ? a.dh_n[b * H + u] : T(0);
            }
        T* sb = sums.data();
        // dst[:, own k] (+)= dg[:, rows r0..r0+K) W_hh[rows, own k]
        auto product = [&](const T* dg, int r0, int K, T* dst, int Bt, bool accumulate) {
            for (int kb = ub0; kb < ub1; ++kb) {
                const T* panel = a.wb + kb * GH * NR + static_cast<ptrdiff_t>(r0) * NR;
                T* c = dst + (kb - ub0) * NR;
                for (int b = 0; b < Bt; b += MR)
                    ukernel<T>(std::min(MR, Bt - b), K, dg + b * GH + r0, GH, 1, panel, c + b * nup, nup, NR, accumulate);
            }
        };
        for (int t = a.T_ - 1; t >= 0; --t) {
            const int Bt = static_cast<int>(a.bs[t]);
            for (int b = 0; b < Bt; ++b) {
                const ptrdiff_t row = off[t] + b;
                const T* ws = a.ws + row * 4 * H;
                const T* hp = t == 0 ? a.h0 + static_cast<ptrdiff_t>(b) * H : a.y + (off[t - 1] + b) * H;
                T* dx = a.dxg + row * GH;
                auto unit = [&](auto tag, int u) {
                    using V = decltype(tag);
                    using M = MathOf<T, V>;
                    const int col = u - u0;
                    V dh_out = ld<V>(dhr + b * nup + col);
                    if (a.dy) dh_out = dh_out + ld<V>(a.dy + row * H + u);
                    V dn, dz, dh;
                    gru_original_backward_output<M>(ld<V>(ws + H + u), ld<V>(ws + 2 * H + u), ld<V>(hp + u), dh_out, dn,
                                                    dz, dh);
                    st(dx + H + u, dz);
                    st(dx + 2 * H + u, dn);
                    st(sb + H + u, ld<V>(sb + H + u) + dz);
                    st(sb + 2 * H + u, ld<V>(sb + 2 * H + u) + dn);
                    st(dhr + b * nup + col, dh);
                };
                for_each_unit<T>(u0, u1, unit);
            }
            barrier.wait(tid);
            const T* dg = a.dxg + off[t] * GH;
            product(dg, 2 * H, H, drh, Bt, false);  // W_hn^T dn
            for (int b = 0; b < Bt; ++b) {
                const ptrdiff_t row = off[t] + b;
                const T* ws = a.ws + row * 4 * H;
                const T* hp = t == 0 ? a.h0 + static_cast<ptrdiff_t>(b) * H : a.y + (off[t - 1] + b) * H;
                T* dx = a.dxg + row * GH;
                auto unit = [&](auto tag, int u) {
                    using V = decltype(tag);
                    using M = MathOf<T, V>;
                    const int col = u - u0;
                    V dr, dh = ld<V>(dhr + b * nup + col);
                    gru_original_backward_gates<M>(ld<V>(ws + u), ld<V>(hp + u), ld<V>(drh + b * nup + col), dr, dh);
                    st(dx + u, dr);
                    st(sb + u, ld<V>(sb + u) + dr);
                    st(dhr + b * nup + col, dh);
                };
                for_each_unit<T>(u0, u1, unit);
            }
            barrier.wait(tid);
            product(dg, 0, 2 * H, dhr, Bt, true);  // + W_h[r,z]^T d[r,z]
        }
        for (int b = 0; b < B; ++b)
            for (int u = u0; u < u1; ++u) a.dh0[b * H + u] = dhr[b * nup + u - u0];
        for (int g = 0; g < 3; ++g)
            for (int u = u0; u < u1; ++u) {
                if (a.db_ih) a.db_ih[g * H + u] += sb[g * H + u];
                if (a.db_hh) a.db_hh[g * H + u] += sb[g * H + u];
            }
    });
}

}  // namespace
