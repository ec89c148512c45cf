// recurrence_lstm_proj.h: the fused CPU recurrence of an LSTM with a projection (torch's proj_size = P),
// forward and BPTT backward. h' = W_hr (o*tanh(c')): the state h has P features, the cell c has H.
// Same packing and work split as recurrence.h, with these tensors:
//   h0, y, h_n [., P]    c0, c_n [B, H]
//   wf         W_hh (4H, P) packed forward (K = P);  wb: W_hh packed backward (panels over P, K = 4H)
//   wr         W_hr (P, H) packed forward (panels over P, K = H) / backward (panels over H, K = P)
//   ws  [N, 6*H]   i, f, g, o, c_t and m_t = o*tanh(c_t), the projection's input (dW_hr pairs with it)
//   dh_all [N, P]  gradient w.r.t. every h_t (dy plus what flows back from t+1)
// A step has two phases and two barriers: forward (gates and m for the thread's units -> barrier -> the
// projection for the thread's slice of P), backward (dm = dh W_hr and the cell for the thread's units ->
// barrier -> dh_{t-1} = dg W_hh for its slice of P, plus dy_{t-1} -> barrier).
#pragma once

#include "recurrence.h"

namespace {

template <typename T>
void lstm_proj_forward(const FwdArgs<T>& a, int requested_threads) {
    constexpr int NR = Tile<T>::NR, MR = Tile<T>::MR;
    const int H = a.H, P = a.P, B = a.B;
    const ptrdiff_t GH = 4 * static_cast<ptrdiff_t>(H);
    const int nub = static_cast<int>(round_up(H, NR) / NR), npb = static_cast<int>(round_up(P, NR) / NR);
    const int nt = threads_for(requested_threads, B, 4, std::max(H, P), std::min(nub, npb));
    const std::vector<ptrdiff_t> off = offsets_of(a.bs, a.T_);
    std::vector<T> zeros(static_cast<size_t>(GH), T(0));
    const T* bi = a.b_ih ? a.b_ih : zeros.data();
    const T* bh = a.b_hh ? a.b_hh : zeros.data();
    std::vector<T> m_all(static_cast<size_t>(B) * H);  // m_t of the step, all units
    const ptrdiff_t per_thread = static_cast<ptrdiff_t>(B) * 5 * nub * NR;  // gates [B][4][nup], c [B][nup]
    std::vector<T> scratch(static_cast<size_t>(per_thread) * nt);

    run_team(nt, [&](int tid, int team, Barrier& barrier) {
        const int ub0 = nub * tid / team, ub1 = nub * (tid + 1) / team;
        const int pb0 = npb * tid / team, pb1 = npb * (tid + 1) / team;
        const int u0 = ub0 * NR, u1 = std::min(H, ub1 * NR), nup = (ub1 - ub0) * NR;
        const ptrdiff_t ldc = 4 * static_cast<ptrdiff_t>(nup);
        T* acc = scratch.data() + per_thread * tid;
        T* cst = acc + static_cast<ptrdiff_t>(B) * ldc;
        for (int b = 0; b < B; ++b)
            for (int u = u0; u < u1; ++u) cst[b * nup + u - u0] = a.c0[b * H + u];
        for (int t = 0; t < a.T_; ++t) {
            const int Bt = static_cast<int>(a.bs[t]);
            const T* h_prev = t == 0 ? a.h0 : a.y + off[t - 1] * P;
            for (int ub = ub0; ub < ub1; ++ub)
                for (int g = 0; g < 4; ++g) {
                    const T* panel = a.wf + static_cast<ptrdiff_t>(ub * 4 + g) * P * NR;
                    T* c = acc + g * nup + (ub - ub0) * NR;
                    for (int b = 0; b < Bt; b += MR)
                        ukernel<T>(std::min(MR, Bt - b), P, h_prev + static_cast<ptrdiff_t>(b) * P, P, 1, panel,
                                   c + b * ldc, ldc, NR, false);
                }
            for (int b = 0; b < Bt; ++b) {
                const ptrdiff_t row = off[t] + b;
                const T* xp = a.xp + row * GH;
                const T* ac = acc + b * ldc;
                T* cb = cst + b * nup;
                T* ws = a.ws ? a.ws + row * 6 * H : nullptr;
                auto unit = [&](auto tag, int u) {
                    using V = decltype(tag);
                    using M = MathOf<T, V>;
                    const int col = u - u0;
                    auto X = [&](int g) { return ld<V>(xp + g * H + u) + ld<V>(bi + g * H + u); };
                    auto R = [&](int g) { return ld<V>(ac + g * nup + col) + ld<V>(bh + g * H + u); };
                    V i, f, g, o, c, m;
                    lstm_forward<M>(X(0), X(1), X(2), X(3), R(0), R(1), R(2), R(3), ld<V>(cb + col), i, f, g, o, c, m);
                    st(cb + col, c);
                    st(m_all.data() + static_cast<ptrdiff_t>(b) * H + u, m);
                    if (ws) {
                        st(ws + u, i); st(ws + H + u, f); st(ws + 2 * H + u, g); st(ws + 3 * H + u, o);
                        st(ws + 4 * H + u, c); st(ws + 5 * H + u, m);
                    }
                };
                for_each_unit<T>(u0, u1, unit);
            }
            barrier.wait(tid);
            // h_t = m_t W_hr^T for the thread's slice of P, written straight into y.
            for (int pb = pb0; pb < pb1; ++pb) {
                const T* panel = a.wr + static_cast<ptrdiff_t>(pb) * H * NR;
                const int n = std::min(NR, P - pb * NR);
                for (int b = 0; b < Bt; b += MR)
                    ukernel<T>(std::min(MR, Bt - b), H, m_all.data() + static_cast<ptrdiff_t>(b) * H, H, 1, panel,
                               a.y + (off[t] + b) * P + pb * NR, P, n, false);
            }
            barrier.wait(tid);
        }
        copy_final_states(a, off, P, pb0 * NR, std::min(P, pb1 * NR));
        for (int b = 0; b < B; ++b)
            for (int u = u0; u < u1; ++u) a.c_n[b * H + u] = cst[b * nup + u - u0];
    });
}

template <typename T>
void lstm_proj_backward(const BwdArgs<T>& a, int requested_threads) {
    constexpr int NR = Tile<T>::NR, MR = Tile<T>::MR;
    const int H = a.H, P = a.P, B = a.B;
    const ptrdiff_t GH = 4 * static_cast<ptrdiff_t>(H);
    const int nub = static_cast<int>(round_up(H, NR) / NR), npb = static_cast<int>(round_up(P, NR) / NR);
    const int nt = threads_for(requested_threads, B, 4, std::max(H, P), std::min(nub, npb));
    const std::vector<ptrdiff_t> off = offsets_of(a.bs, a.T_);
    // Per thread: dh carry [B][npp] (its slice of P), dm [B][nup], dc carry [B][nup].
    const ptrdiff_t per_thread = static_cast<ptrdiff_t>(B) * (npb + 2 * nub) * NR;
    std::vector<T> scratch(static_cast<size_t>(per_thread) * nt);
    std::vector<T> sums(static_cast<size_t>(GH), T(0));

    run_team(nt, [&](int tid, int team, Barrier& barrier) {
        const int ub0 = nub * tid / team, ub1 = nub * (tid + 1) / team;
        const int pb0 = npb * tid / team, pb1 = npb * (tid + 1) / team;
        const int u0 = ub0 * NR, u1 = std::min(H, ub1 * NR), nup = (ub1 - ub0) * NR;
        const int p0 = pb0 * NR, p1 = std::min(P, pb1 * NR), npp = (pb1 - pb0) * NR;
        T* dhr = scratch.data() + per_thread * tid;
        T* dm = dhr + static_cast<ptrdiff_t>(B) * npp;
        T* dcs = dm + static_cast<ptrdiff_t>(B) * nup;
        for (int b = 0; b < B; ++b) {
            for (int j = 0; j < npp; ++j)
                dhr[b * npp + j] = (a.dh_n && p0 + j < p1) ? a.dh_n[b * P + p0 + j] : T(0);
            for (int j = 0; j < nup; ++j) dcs[b * nup + j] = (a.dc_n && u0 + j < u1) ? a.dc_n[b * H + u0 + j] : T(0);
        }
        // dh_all rows of step t for the thread's slice of P: dy + the carry (dh_n, or what step t+1 sent).
        auto assemble = [&](int t) {
            for (int b = 0; b < static_cast<int>(a.bs[t]); ++b) {
                const ptrdiff_t row = off[t] + b;
                for (int p = p0; p < p1; ++p)
                    a.dh_all[row * P + p] = dhr[b * npp + p - p0] + (a.dy ? a.dy[row * P + p] : T(0));
            }
        };
        if (a.T_ > 0) assemble(a.T_ - 1);
        barrier.wait(tid);
        T* sb = sums.data();
        for (int t = a.T_ - 1; t >= 0; --t) {
            const int Bt = static_cast<int>(a.bs[t]);
            // dm = dh_t W_hr for the thread's units.
            for (int ub = ub0; ub < ub1; ++ub) {
                const T* panel = a.wr + static_cast<ptrdiff_t>(ub) * P * NR;
                for (int b = 0; b < Bt; b += MR)
                    ukernel<T>(std::min(MR, Bt - b), P, a.dh_all + (off[t] + b) * P, P, 1, panel,
                               dm + b * nup + (ub - ub0) * NR, nup, NR, false);
            }
            for (int b = 0; b < Bt; ++b) {
                const ptrdiff_t row = off[t] + b, prev = t == 0 ? -1 : off[t - 1] + b;
                const T* ws = a.ws + row * 6 * H;
                T* dx = a.dxg + row * GH;
                auto unit = [&](auto tag, int u) {
                    using V = decltype(tag);
                    using M = MathOf<T, V>;
                    const int col = u - u0;
                    const V c_prev = prev < 0 ? ld<V>(a.c0 + b * H + u) : ld<V>(a.ws + prev * 6 * H + 4 * H + u);
                    V di, df, dg, d_o, dc;
                    lstm_backward<M>(ld<V>(ws + u), ld<V>(ws + H + u), ld<V>(ws + 2 * H + u), ld<V>(ws + 3 * H + u),
                                     c_prev, ld<V>(ws + 4 * H + u), ld<V>(dm + b * nup + col), ld<V>(dcs + b * nup + col),
                                     di, df, dg, d_o, dc);
                    const V d[4] = {di, df, dg, d_o};
                    for (int q = 0; q < 4; ++q) {
                        st(dx + q * H + u, d[q]);
                        st(sb + q * H + u, ld<V>(sb + q * H + u) + d[q]);
                    }
                    st(dcs + b * nup + col, dc);
                };
                for_each_unit<T>(u0, u1, unit);
            }
            barrier.wait(tid);
            // dh_{t-1} = dg_t W_hh for the thread's slice of P, then the rows of step t-1 are assembled.
            const T* dg = a.dxg + off[t] * GH;
            for (int pb = pb0; pb < pb1; ++pb) {
                const T* panel = a.wb + static_cast<ptrdiff_t>(pb) * GH * NR;
                for (int b = 0; b < Bt; b += MR)
                    ukernel<T>(std::min(MR, Bt - b), GH, dg + b * GH, GH, 1, panel, dhr + b * npp + (pb - pb0) * NR,
                               npp, NR, false);
            }
            if (t > 0) assemble(t - 1);
            barrier.wait(tid);
        }
        for (int b = 0; b < B; ++b) {
            for (int p = p0; p < p1; ++p) a.dh0[b * P + p] = dhr[b * npp + p - p0];
            if (a.dc0)
                for (int u = u0; u < u1; ++u) a.dc0[b * H + u] = dcs[b * nup + u - u0];
        }
        for (int q = 0; q < 4; ++q)
            for (int u = u0; u < u1; ++u) {
                if (a.db_ih) a.db_ih[q * H + u] += sb[q * H + u];
                if (a.db_hh) a.db_hh[q * H + u] += sb[q * H + u];
            }
    });
}

}  // namespace
