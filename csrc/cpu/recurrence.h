// recurrence.h: the fused CPU recurrence kernels, forward and BPTT backward, for every cell.
//
// One call runs all T steps of one layer, one direction. Sequences of different lengths are packed as in
// a torch PackedSequence: step t has bs[t] active batch rows (non-increasing in t: rows sorted by length,
// longest first), and per-token tensors hold the active rows of step 0, then those of step 1, ...:
// N = sum(bs) rows, row(t, b) = off[t] + b with off[t] = bs[0] + ... + bs[t-1]. A full-length batch is
// bs[t] = B, which is the plain [T, B, ...] layout. Padded steps cost nothing. Tensors (row-major):
//   bs    [T]           active rows per step; B = bs[0]
//   xp    [N, G*H]      W_ih x_t for every token (no bias: the kernel adds b_ih)
//   h0    [B, H]        initial hidden state;  c0 [B, H] initial cell state (LSTM)
//   wf    packed W_hh for the forward product, panels (unit block, gate): see pack_forward()
//   wb    packed W_hh for the backward product, panels (unit block):      see pack_backward()
//   b_ih, b_hh [G*H] or null
//   y     [N, H]        outputs h_t (also the h_{t-1} that the next step reads)
//   h_n, c_n [B, H]     final states: each row's state after its own last step
//   ws    [N, S*H]      training workspace, or null in inference. S slots per unit:
//                       LSTM: i, f, g, o (activated), c_t  (S=5);  GRU: r, z, n, hn (S=4);  RNN: none
// Backward:
//   dy    [N, H] or null; dh_n, dc_n [B, H] or null (gradients w.r.t. h_n and c_n)
//   dxg   [N, G*H]      gradient w.r.t. the input pre-activations (W_ih x + b_ih)
//   dhg   [N, G*H]      gradient w.r.t. the recurrent pre-activations (W_hh h + b_hh); GRU only, for the
//                       other cells it is dxg itself
//   dh0, dc0 [B, H]; db_ih, db_hh [G*H] accumulated (+=) when not null
//
// Work split: hidden units are cut into blocks of NR (the panel width); each thread owns a run of blocks,
// computes all gates of its units (recurrent GEMM fused with the cell), and the threads meet at one
// barrier per step, whose latency the forward hides behind the product of its own units. Backward uses the
// same split over the columns of W_hh (dh_{t-1} = dhg_t W_hh). Results are identical from run to run with
// the same thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/cells.h"
#include "gemm.h"
#include "kernels.h"
#include "threads.h"

namespace {

// kGruOriginal (linear_before_reset=False) has its own kernels in recurrence_gru_original.h.
enum CellId { kRnnTanh = 0, kRnnRelu = 1, kLstm = 2, kGru = 3, kGruOriginal = 4 };

inline int gates_of(int cell) { return cell == kLstm ? 4 : cell >= kGru ? 3 : 1; }
inline int slots_of(int cell) { return cell == kLstm ? 5 : cell >= kGru ? 4 : 0; }

// The math policy of a value type: vector math for SIMD vectors of T, scalar math for T itself.
template <typename T, typename V>
using MathOf = std::conditional_t<std::is_same<V, T>::value, ScalarMath<T>, VecMath<T>>;

// Calls f(V{}, u) for the units [u0, u1): whole SIMD vectors first (V = Simd<T>::V), then the tail one unit
// at a time (V = T). Unit blocks start at multiples of the vector width, so which units take the scalar tail
// does not depend on the thread split.
template <typename T, typename F>
inline void for_each_unit(int u0, int u1, F&& f) {
    constexpr int W = Simd<T>::W;
    int u = u0;
    for (; u + W <= u1; u += W) f(typename Simd<T>::V{}, u);
    for (; u < u1; ++u) f(T{}, u);
}

template <typename V, typename T>
inline V ld(const T* p) {
    if constexpr (std::is_same<V, T>::value) return *p; else return loadu<V>(p);
}
template <typename V, typename T>
inline void st(T* p, V v) {
    if constexpr (std::is_same<V, T>::value) *p = v; else storeu(p, v);
}

// ------------------------------------------------------------------------------------------- packing
// A recurrent weight w is (G*H, K): G gates of H rows, K = the recurrent state's size (H, or proj_size).
// The forward layout cuts rows into panels of NR units, gate by gate; the backward layout cuts columns.
template <typename T>
inline ptrdiff_t packed_size_forward(int G, int H, int K) {
    return round_up(H, Tile<T>::NR) * static_cast<ptrdiff_t>(G) * K;
}
template <typename T>
inline ptrdiff_t packed_size_backward(int G, int H, int K) {
    return round_up(K, Tile<T>::NR) * static_cast<ptrdiff_t>(G) * H;
}

// wf[(ub*G + g)*K*NR + k*NR + j] = w[g*H + ub*NR + j, k]
template <typename T>
void pack_forward(const T* w, int G, int H, int K, T* wf) {
    constexpr int NR = Tile<T>::NR;
    const int nub = static_cast<int>(round_up(H, NR) / NR);
    for (int ub = 0; ub < nub; ++ub)
        for (int g = 0; g < G; ++g) {
            const int n = std::min(NR, H - ub * NR);
            // B(k, j) = w[(g*H + ub*NR + j)*K + k]: k stride 1, j stride K.
            pack_panels<T>(w + static_cast<ptrdiff_t>(g * H + ub * NR) * K, 1, K, 0, K, 0, n,
                           wf + static_cast<ptrdiff_t>(ub * G + g) * K * NR);
        }
}

// wb[kb*G*H*NR + r*NR + j] = w[r, kb*NR + j]
template <typename T>
void pack_backward(const T* w, int G, int H, int K, T* wb) {
    constexpr int NR = Tile<T>::NR;
    const int nkb = static_cast<int>(round_up(K, NR) / NR);
    const ptrdiff_t GH = static_cast<ptrdiff_t>(G) * H;
    for (int kb = 0; kb < nkb; ++kb)
        pack_panels<T>(w, K, 1, 0, GH, kb * NR, std::min(NR, K - kb * NR), wb + kb * GH * NR);
}

// ------------------------------------------------------------------------------------------- arguments
template <typename T>
using FwdArgs = rnnfast::cpu::ForwardCall<T>;
template <typename T>
using BwdArgs = rnnfast::cpu::BackwardCall<T>;

// off[t] = bs[0] + ... + bs[t-1], for t = 0..T.
inline std::vector<ptrdiff_t> offsets_of(const int64_t* bs, int T_) {
    std::vector<ptrdiff_t> off(static_cast<size_t>(T_) + 1, 0);
    for (int t = 0; t < T_; ++t) off[t + 1] = off[t] + bs[t];
    return off;
}

// h_n[:, q0:q1] = each row's state after its own last step (S features): the output of that step, or h0
// for T = 0. Row b's last step is the last t with bs[t] > b; rows go longest first, so it only moves back.
template <typename T>
void copy_final_states(const rnnfast::cpu::ForwardCall<T>& a, const std::vector<ptrdiff_t>& off, int S, int q0,
                       int q1) {
    int t_last = a.T_ - 1;
    for (int b = 0; b < a.B; ++b) {
        while (t_last >= 0 && a.bs[t_last] <= b) --t_last;
        const T* last = t_last >= 0 ? a.y + (off[t_last] + b) * S : a.h0 + static_cast<ptrdiff_t>(b) * S;
        for (int q = q0; q < q1; ++q) a.h_n[b * S + q] = last[q];
    }
}

// Threads worth using for a step of this size: a barrier crossing costs about as much as ~8k multiply-adds
// (measured: LSTM H=64 B=1 gains from 2 threads, RNN H=64 B=1 loses).
// A negative request asks for exactly that many threads (tests use it to exercise the split on small shapes).
inline int threads_for(int requested, int B, int G, int H, int nub) {
    if (requested < 0) return std::max(1, std::min(-requested, nub));
    const double fma_per_step = static_cast<double>(B) * G * H * H;
    int nt = static_cast<int>(fma_per_step / 8192.0);
    return std::max(1, std::min({requested, nub, std::max(nt, 1)}));
}


// ------------------------------------------------------------------------------------------- forward
// Pointwise part of one step for units [u, u+lanes) of the token in packed row `row` (V = vector or scalar).
template <typename T, typename V, typename M>
inline void forward_units(const FwdArgs<T>& a, ptrdiff_t row, int u, const T* acc, int nup, int col,
                          const T* h_prev, const T* bi, const T* bh, T* cst) {
    const int H = a.H, G = gates_of(a.cell);
    const ptrdiff_t GH = static_cast<ptrdiff_t>(G) * H;
    const T* xp = a.xp + row * GH;
    T* y = a.y + row * H;
    auto X = [&](int g) { return ld<V>(xp + g * H + u) + ld<V>(bi + g * H + u); };
    auto R = [&](int g) { return ld<V>(acc + g * nup + col) + ld<V>(bh + g * H + u); };
    T* ws = a.ws ? a.ws + row * slots_of(a.cell) * H + u : nullptr;
    if (a.cell == kRnnTanh) {
        st(y + u, rnn_tanh_forward<M>(X(0), R(0)));
    } else if (a.cell == kRnnRelu) {
        st(y + u, rnn_relu_forward<M>(X(0), R(0)));
    } else if (a.cell == kLstm) {
        V i, f, g, o, c, h;
        lstm_forward<M>(X(0), X(1), X(2), X(3), R(0), R(1), R(2), R(3), ld<V>(cst + col), i, f, g, o, c, h);
        st(cst + col, c);
        st(y + u, h);
        if (ws) { st(ws, i); st(ws + H, f); st(ws + 2 * H, g); st(ws + 3 * H, o); st(ws + 4 * H, c); }
    } else {
        V r, z, n, h, hn = R(2);
        gru_forward<M>(X(0), X(1), X(2), R(0), R(1), hn, ld<V>(h_prev + u), r, z, n, h);
        st(y + u, h);
        if (ws) { st(ws, r); st(ws + H, z); st(ws + 2 * H, n); st(ws + 3 * H, hn); }
    }
}

template <typename T>
void recurrence_forward(const FwdArgs<T>& a, int requested_threads) {
    constexpr int NR = Tile<T>::NR, MR = Tile<T>::MR;
    const int H = a.H, B = a.B, G = gates_of(a.cell);
    const int nub = static_cast<int>(round_up(H, NR) / NR);
    const int nt = threads_for(requested_threads, B, G, H, nub);
    const std::vector<ptrdiff_t> off = offsets_of(a.bs, a.T_);
    std::vector<T> zeros(static_cast<size_t>(G) * H, T(0));
    const T* bi = a.b_ih ? a.b_ih : zeros.data();
    const T* bh = a.b_hh ? a.b_hh : zeros.data();
    // Per-thread scratch: gate accumulators [B][G][nup] and the LSTM cell state [B][nup].
    const ptrdiff_t per_thread = static_cast<ptrdiff_t>(B) * (G + 1) * nub * NR;
    std::vector<T> scratch(static_cast<size_t>(per_thread) * nt);

    run_team(nt, [&](int tid, int team, Barrier& barrier) {
        const int ub0 = nub * tid / team, ub1 = nub * (tid + 1) / team;
        const int u0 = ub0 * NR, u1 = std::min(H, ub1 * NR), nup = (ub1 - ub0) * NR;
        T* acc = scratch.data() + per_thread * tid;
        T* cst = acc + static_cast<ptrdiff_t>(B) * G * nup;
        if (a.cell == kLstm)
            for (int b = 0; b < B; ++b)
                for (int u = u0; u < u1; ++u) cst[b * nup + u - u0] = a.c0[b * H + u];
        const ptrdiff_t ldc = static_cast<ptrdiff_t>(G) * nup;
        // acc (+)= h_prev[:, k0:k1] W_hh[own rows, k0:k1]^T
        auto product = [&](const T* h_prev, int Bt, int k0, int k1, bool accumulate) {
            if (k1 <= k0) return;
            for (int ub = ub0; ub < ub1; ++ub)
                for (int g = 0; g < G; ++g) {
                    const T* panel = a.wf + static_cast<ptrdiff_t>(ub * G + g) * H * NR + static_cast<ptrdiff_t>(k0) * NR;
                    T* c = acc + g * nup + (ub - ub0) * NR;
                    for (int b = 0; b < Bt; b += MR)
                        ukernel<T>(std::min(MR, Bt - b), k1 - k0, h_prev + static_cast<ptrdiff_t>(b) * H + k0, H, 1,
                                   panel, c + b * ldc, ldc, NR, accumulate);
                }
        };
        // Split the product around the crossing only while the thread's weights stay in L1: measured here,
        // LSTM H=64 B=1 gains 2.4x from it at two threads, while H=256 (weights streamed from L2) loses 30%.
        const bool split = static_cast<size_t>(G) * nup * H * sizeof(T) <= 48 * 1024;
        uint64_t epoch = 0;
        for (int t = 0; t < a.T_; ++t) {
            const int Bt = static_cast<int>(a.bs[t]);
            // Step t-1's rows come first in the same order, so its first Bt rows are this step's h_{t-1}.
            const T* h_prev = t == 0 ? a.h0 : a.y + off[t - 1] * H;
            if (t == 0 || team == 1 || !split) {
                if (t > 0) barrier.wait_for(tid, epoch);
                product(h_prev, Bt, 0, H, false);
            } else {
                // The thread's own units of h_{t-1} are ready: multiply them while the others finish theirs.
                // (This hides the crossing's latency; the sum's order then depends on the split, so results
                // are identical run to run for a thread count, not across thread counts.)
                product(h_prev, Bt, u0, u1, false);
                barrier.wait_for(tid, epoch);
                product(h_prev, Bt, 0, u0, true);
                product(h_prev, Bt, u1, H, true);
            }
            for (int b = 0; b < Bt; ++b) {
                const T* accb = acc + b * ldc;
                T* cb = cst + b * nup;
                const T* hp = h_prev + static_cast<ptrdiff_t>(b) * H;
                const ptrdiff_t row = off[t] + b;
                for_each_unit<T>(u0, u1, [&](auto v, int u) {
                    using V = decltype(v);
                    forward_units<T, V, MathOf<T, V>>(a, row, u, accb, nup, u - u0, hp, bi, bh, cb);
                });
            }
            epoch = barrier.arrive(tid);
        }
        barrier.wait_for(tid, epoch);
        copy_final_states(a, off, H, u0, u1);
        if (a.cell == kLstm)
            for (int b = 0; b < B; ++b)
                for (int u = u0; u < u1; ++u) a.c_n[b * H + u] = cst[b * nup + u - u0];
    });
}

// ------------------------------------------------------------------------------------------- backward
// Pointwise part of one reverse step for units [u, u+lanes) of the token in packed row `row`; prev_row is
// the same batch row at step t-1 (-1 at t = 0). dhr holds the gradient w.r.t. h_t coming from step t+1
// and receives the direct part of the gradient w.r.t. h_{t-1}.
template <typename T, typename V, typename M>
inline void backward_units(const BwdArgs<T>& a, ptrdiff_t row, ptrdiff_t prev_row, int b, int u, int col, T* dhr,
                           T* dcs, T* sbi, T* sbh) {
    const int H = a.H, G = gates_of(a.cell);
    const ptrdiff_t GH = static_cast<ptrdiff_t>(G) * H;
    V dh = ld<V>(dhr + col);
    if (a.dy) dh = dh + ld<V>(a.dy + row * H + u);
    T* dx = a.dxg + row * GH + u;
    auto put = [&](int g, V d) {  // one gate whose input and recurrent gradients are equal
        st(dx + g * H, d);
        st(sbi + g * H + u, ld<V>(sbi + g * H + u) + d);
        st(sbh + g * H + u, ld<V>(sbh + g * H + u) + d);
    };
    if (a.cell == kRnnTanh || a.cell == kRnnRelu) {
        const V h = ld<V>(a.y + row * H + u);
        put(0, a.cell == kRnnTanh ? rnn_tanh_backward<M>(h, dh) : rnn_relu_backward<M>(h, dh));
        st(dhr + col, M::c(0.0));
    } else if (a.cell == kLstm) {
        const T* ws = a.ws + row * 5 * H + u;
        const V c_prev = prev_row < 0 ? ld<V>(a.c0 + b * H + u) : ld<V>(a.ws + prev_row * 5 * H + 4 * H + u);
        V di, df, dg, d_o, dc;
        lstm_backward<M>(ld<V>(ws), ld<V>(ws + H), ld<V>(ws + 2 * H), ld<V>(ws + 3 * H), c_prev, ld<V>(ws + 4 * H), dh,
                         ld<V>(dcs + col), di, df, dg, d_o, dc);
        put(0, di); put(1, df); put(2, dg); put(3, d_o);
        st(dcs + col, dc);
        st(dhr + col, M::c(0.0));
    } else {
        const T* ws = a.ws + row * 4 * H + u;
        const V h_prev = prev_row < 0 ? ld<V>(a.h0 + b * H + u) : ld<V>(a.y + prev_row * H + u);
        V dr, dz, dnx, dnh, dhp;
        gru_backward<M>(ld<V>(ws), ld<V>(ws + H), ld<V>(ws + 2 * H), ld<V>(ws + 3 * H), h_prev, dh, dr, dz, dnx, dnh, dhp);
        put(0, dr); put(1, dz);
        st(dx + 2 * H, dnx);
        T* dhg = a.dhg + row * GH + u;
        st(dhg, dr); st(dhg + H, dz); st(dhg + 2 * H, dnh);
        st(sbi + 2 * H + u, ld<V>(sbi + 2 * H + u) + dnx);
        st(sbh + 2 * H + u, ld<V>(sbh + 2 * H + u) + dnh);
        st(dhr + col, dhp);
    }
}

template <typename T>
void recurrence_backward(const BwdArgs<T>& a, int requested_threads) {
    constexpr int NR = Tile<T>::NR, MR = Tile<T>::MR;
    const int H = a.H, B = a.B, G = gates_of(a.cell);
    const ptrdiff_t GH = static_cast<ptrdiff_t>(G) * H;
    const int nub = static_cast<int>(round_up(H, NR) / NR);
    const int nt = threads_for(requested_threads, B, G, H, nub);
    const std::vector<ptrdiff_t> off = offsets_of(a.bs, a.T_);
    const T* dhg_all = a.cell == kGru ? a.dhg : a.dxg;
    // Per-thread scratch: dh carry [B][nup], dc carry [B][nup]; bias-gradient sums for all G*H
    // (each thread touches only its own units, so no two threads write the same element).
    const ptrdiff_t per_thread = 2 * static_cast<ptrdiff_t>(B) * nub * NR;
    std::vector<T> scratch(static_cast<size_t>(per_thread) * nt);
    std::vector<T> sums(static_cast<size_t>(2 * GH), T(0));

    run_team(nt, [&](int tid, int team, Barrier& barrier) {
        const int ub0 = nub * tid / team, ub1 = nub * (tid + 1) / team;
        const int u0 = ub0 * NR, u1 = std::min(H, ub1 * NR), nup = (ub1 - ub0) * NR;
        T* dhr = scratch.data() + per_thread * tid;
        T* dcs = dhr + static_cast<ptrdiff_t>(B) * nup;
        // A row's carries start at dh_n / dc_n and wait untouched until its own last step comes up.
        for (int b = 0; b < B; ++b)
            for (int j = 0; j < nup; ++j) {
                const int u = u0 + j;
                dhr[b * nup + j] = (a.dh_n && u < u1) ? a.dh_n[b * H + u] : T(0);
                dcs[b * nup + j] = (a.dc_n && u < u1) ? a.dc_n[b * H + u] : T(0);
            }
        T* sbi = sums.data();
        T* sbh = sums.data() + GH;
        for (int t = a.T_ - 1; t >= 0; --t) {
            const int Bt = static_cast<int>(a.bs[t]);
            for (int b = 0; b < Bt; ++b) {
                T* dh = dhr + b * nup;
                T* dc = dcs + b * nup;
                const ptrdiff_t row = off[t] + b, prev_row = t == 0 ? -1 : off[t - 1] + b;
                for_each_unit<T>(u0, u1, [&](auto v, int u) {
                    using V = decltype(v);
                    backward_units<T, V, MathOf<T, V>>(a, row, prev_row, b, u, u - u0, dh, dc, sbi, sbh);
                });
            }
            barrier.wait(tid);
            const T* dg = dhg_all + off[t] * GH;
            for (int kb = ub0; kb < ub1; ++kb) {
                const T* panel = a.wb + kb * GH * NR;
                T* c = dhr + (kb - ub0) * NR;
                for (int b = 0; b < Bt; b += MR)
                    ukernel<T>(std::min(MR, Bt - b), GH, dg + b * GH, GH, 1, panel, c + b * nup, nup, NR, true);
            }
        }
        for (int b = 0; b < B; ++b)
            for (int u = u0; u < u1; ++u) {
                a.dh0[b * H + u] = dhr[b * nup + u - u0];
                if (a.cell == kLstm && a.dc0) a.dc0[b * H + u] = dcs[b * nup + u - u0];
            }
        for (int g = 0; g < G; ++g)
            for (int u = u0; u < u1; ++u) {
                if (a.db_ih) a.db_ih[g * H + u] += sbi[g * H + u];
                if (a.db_hh) a.db_hh[g * H + u] += sbh[g * H + u];
            }
    });
}

}  // namespace
