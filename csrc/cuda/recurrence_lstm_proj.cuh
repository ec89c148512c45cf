// recurrence_lstm_proj.cuh: the LSTM with a projection (proj_size P; cells.h's Lstm with slot kM): the cell
// of every unit, then h_t = W_hr m_t for the block's slice of P, so a step has two grid-wide phases
// (backward: three), as on the CPU (csrc/cpu/recurrence_lstm_proj.h). Tensors as in launch.h (S = P); the
// scratch's first [B, H] holds m_t between the phases. W_hh and W_hr are read from global memory (L2).
#pragma once

#include "cell_access.cuh"

namespace rnnfast_cuda {

RF_GLOBAL void lstm_proj_forward_kernel(FwdParams p, Grid g) {
    using Cell = rnnfast::Lstm;
    constexpr int G = Cell::kGates, slots = Cell::slots(true);
    const int H = p.H, P = p.P;
    const Span us = own_units(H, g), fs = own_features(P);
    float* m = g.scratch;  // [B][H]: m_t = o*tanh(c_t), what W_hr reads
    init_cell_state(p, g, us);
    for (int t = g.t_begin; t < g.t_end; ++t) {
        const Step s = step_at(g, t);
        const float* hp = h_prev_rows(s, p.h0, p.y, P);
        if (g.phases & 1) {  // the cell of the own units
            for_each_unit(s, us, [&](int b, int u, long row) {
                float pre[G];
                for (int k = 0; k < G; ++k) pre[k] = dot(p.w_hh + (k * H + u) * static_cast<long>(P), 1, hp + b * P, 1, P);
                const WsOut ws = ws_out(p.ws, slots, H, row, u);
                float c = p.c_n[b * H + u];
                const float mv = Cell::forward<DeviceMath, float>(fwd_in(p, G, row, b, u, pre, 1, hp + b * P), c, ws);
                p.c_n[b * H + u] = c;
                m[b * H + u] = mv;
                ws.put(Cell::kM, mv);
            });
            grid_barrier(g);
        }
        if (g.phases & 2) {  // h_t = W_hr m_t for the block's features
            for_each_unit(s, fs, [&](int b, int q, long row) {
                p.y[row * P + q] = dot(p.w_hr + q * static_cast<long>(H), 1, m + b * H, 1, H);
            });
            grid_barrier(g);
        }
    }
    if (g.t_end == p.T && (g.phases & 2)) copy_final_states(p, g, P, fs);
}

// Phases of a (reverse) step: 1 dh_t = dy + what step t+1 sent, into dh_all, for the block's features;
// 2 dm = dh_t W_hr, then the cell of the own units; 3 dh_{t-1} = dg_t W_hh for the block's features (rows
// not running keep their carry).
RF_GLOBAL void lstm_proj_backward_kernel(BwdParams p, Grid g) {
    using Cell = rnnfast::Lstm;
    constexpr int G = Cell::kGates, slots = Cell::slots(true);
    const int H = p.H, P = p.P;
    const long GH = static_cast<long>(G) * H;
    const Span us = own_units(H, g), fs = own_features(P);
    for (int t = g.t_end - 1; t >= g.t_begin; --t) {
        const Step s = step_at(g, t);
        if (g.phases & 1) {
            for_each_unit(s, fs, [&](int b, int q, long row) {
                p.dh_all[row * P + q] = dh_total(p, P, b, q, row);
            });
            grid_barrier(g);
        }
        if (g.phases & 2) {
            for_each_unit(s, us, [&](int b, int u, long row) {
                const float dm = dot(p.dh_all + row * P, 1, p.w_hr + u, H, P);
                float dc = p.dc[b * H + u];
                Cell::backward<DeviceMath, float>(saved_at(p, G, slots, s, b, u), dm, dc, grads_at(p, G, row, u));
                p.dc[b * H + u] = dc;
            });
            grid_barrier(g);
        }
        if (g.phases & 4) {
            for_each_unit(s, fs, [&](int b, int q, long row) {
                p.dh[b * P + q] = dot(p.dxg + row * GH, 1, p.w_hh + q, P, GH);
            });
            grid_barrier(g);
        }
    }
}

}  // namespace rnnfast_cuda
