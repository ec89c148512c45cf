// recurrence.cuh: the CUDA recurrence kernels (float32) of the single-phase cells (RNN tanh/relu, LSTM
// without projection, GRU torch form), forward and BPTT backward, instantiated with cells.h's traits, in the
// packed-sequence layout of the CPU kernels. Tensors as in launch.h (S = H here); split and paths as in
// skeleton.cuh. The persistent path keeps the block's slice of W_hh in shared memory for every step
// (forward: its G*U rows, backward: its U columns); the per-step path reads W_hh from global memory.
#pragma once

#include "cell_access.cuh"

namespace rnnfast_cuda {

// Shared memory of a block, in floats: the W_hh slice (persistent) and, forward, the products [B][G*U].
inline int forward_shared_floats(int G, int H, int U, int B, bool persistent) {
    return (persistent ? G * U * H : 0) + B * G * U;
}
inline int backward_shared_floats(int G, int H, int U, bool persistent) { return persistent ? G * H * U : 0; }

// One phase a step: the products of the block's G*U rows of W_hh with h_{t-1}, then the cell.
template <class Cell>
RF_GLOBAL void forward_kernel(FwdParams p, Grid g) {
    constexpr int G = Cell::kGates;
    const int H = p.H, U = g.U, R = G * U;
    const Span us = own_units(H, g);
    float* wsh = rf::dyn_shared<float>();                                 // [H][R]: W_hh rows, transposed
    float* acc = wsh + (g.persistent ? static_cast<long>(H) * R : 0);    // [B][R]: their products
    if (g.persistent) load_rows_transposed(p.w_hh, G, H, U, us, wsh);
    init_cell_state(p, g, us);
    __syncthreads();
    for (int t = g.t_begin; t < g.t_end; ++t) {
        const Step s = step_at(g, t);
        const float* hp = h_prev_rows(s, p.h0, p.y, H);
        const float* hd = dropped_rows(p, s, G);  // with recurrent dropout, gate g reads h_{t-1} under its own mask
        for_each(s.rows, R, [&](int b, int r) {
            const int j = r % U;
            const float* src = hd ? hd + (static_cast<long>(b) * G + r / U) * H : hp + b * H;
            acc[b * R + r] = g.persistent ? dot(wsh + r, R, src, 1, H)
                             : j < us.n ? dot(p.w_hh + (r / U * H + us.begin + j) * static_cast<long>(H), 1, src, 1, H)
                                        : 0.0f;
        });
        __syncthreads();
        for_each_unit(s, us, [&](int b, int u, long row) {
            float c = p.c_n ? p.c_n[b * H + u] : 0.0f;
            p.y[row * H + u] = Cell::template forward<DeviceMath, float>(
                fwd_in(p, G, row, b, u, acc + b * R + (u - us.begin), U, hp + b * H), c, ws_out(p.ws, Cell::kSlots, H, row, u));
            if (p.c_n) p.c_n[b * H + u] = c;
            put_dropped(p, G, row, b, u);
        });
        if (g.persistent) rf::grid_sync(); else __syncthreads();
    }
    if (g.t_end == p.T) copy_final_states(p, g, H, us);
}

// Two phases a step: 0 the cell's backward for the own units (needs every unit's dh_t), 1 the own units'
// share of W_hh^T dg (needs every unit's dg_t: a grid barrier between them).
template <class Cell>
RF_GLOBAL void backward_kernel(BwdParams p, Grid g) {
    constexpr int G = Cell::kGates;
    const int H = p.H, U = g.U;
    const long GH = static_cast<long>(G) * H;
    const Span us = own_units(H, g);
    float* wsh = rf::dyn_shared<float>();  // [G*H][U]: W_hh columns
    if (g.persistent) {
        load_columns(p.w_hh, GH, H, U, us, wsh);
        __syncthreads();
    }
    const float* dg_all = p.dhg ? p.dhg : p.dxg;  // what W_hh's product saw
    for (int t = g.t_end - 1; t >= g.t_begin; --t) {
        const Step s = step_at(g, t);
        if (g.phases & 1) {
            for_each_unit(s, us, [&](int b, int u, long row) {
                const float dh = dh_total(p, H, b, u, row);
                float dc = p.dc ? p.dc[b * H + u] : 0.0f;
                p.dh[b * H + u] = Cell::template backward<DeviceMath, float>(saved_at(p, G, Cell::kSlots, s, b, u), dh, dc,
                                                                            grads_at(p, G, row, u));
                if (p.dc) p.dc[b * H + u] = dc;
            });
            grid_barrier(g);
        }
        if (g.phases & 2) {  // dh_{t-1}[:, own units] += dg_t W_hh[:, own units] (each gate's under its mask)
            const float* dg = dg_all + s.off * GH;
            for_each(s.rows, us.n, [&](int b, int j) {
                const int u = us.begin + j;
                auto part = [&](long r0, long n) {
                    return g.persistent ? dot(dg + b * GH + r0, 1, wsh + r0 * U + j, U, n)
                                        : dot(dg + b * GH + r0, 1, p.w_hh + r0 * H + u, H, n);
                };
                if (!p.rec_mask) {
                    p.dh[b * H + u] += part(0, GH);
                    return;
                }
                for (int q = 0; q < G; ++q) p.dh[b * H + u] += p.rec_mask[b * GH + q * H + u] * part(q * H, H);
            });
            __syncthreads();  // the next step's first phase reads only the own units' dh
        }
    }
}

}  // namespace rnnfast_cuda
