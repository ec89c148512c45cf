// recurrence_gru_original.cuh: the GRU with linear_before_reset=False (cells.h's GruOriginal), whose candidate
// reads W_hn (r*h): every unit's r*h must exist before any candidate, so a step has two grid-wide phases
// (backward: three), as on the CPU (csrc/cpu/recurrence_gru_original.h). Tensors as in launch.h; the
// scratch [B, 2H] holds r*h and z between the phases. W_hh is read from global memory (L2). With recurrent
// dropout W_hr and W_hz read h under their masks (p.h_drop), r*h reads h under the candidate's (the cell's h_read),
// and the shares of dh go back under them.
#pragma once

#include "cell_access.cuh"

namespace rnnfast_cuda {

RF_GLOBAL void gru_original_forward_kernel(FwdParams p, Grid g) {
    using Cell = rnnfast::GruOriginal;
    const int H = p.H;
    const Span us = own_units(H, g);
    float* rh = g.scratch;          // [B][H]: r*h of the step
    float* zs = g.scratch + p.B * H;  // [B][H]: z of the step
    for (int t = g.t_begin; t < g.t_end; ++t) {
        const Step s = step_at(g, t);
        const float* hp = h_prev_rows(s, p.h0, p.y, H);
        const long GH = static_cast<long>(Cell::kGates) * H;
        const float* hd = dropped_rows(p, s, Cell::kGates);
        if (g.phases & 1) {  // r, z and r*h of the own units
            for_each_unit(s, us, [&](int b, int u, long row) {
                float pre[2];
                for (int k = 0; k < 2; ++k)
                    pre[k] = dot(p.w_hh + (k * H + u) * static_cast<long>(H), 1, hd ? hd + b * GH + k * H : hp + b * H,
                                 1, H);
                rh[b * H + u] = Cell::gates<DeviceMath, float>(fwd_in(p, Cell::kGates, row, b, u, pre, 1, hp + b * H),
                                                               zs[b * H + u], ws_out(p.ws, Cell::kSlots, H, row, u));
            });
            grid_barrier(g);
        }
        if (g.phases & 2) {  // the candidate from W_hn (r*h), and h_t
            for_each_unit(s, us, [&](int b, int u, long row) {
                const float pre[3] = {0.0f, 0.0f, dot(p.w_hh + (2 * H + u) * static_cast<long>(H), 1, rh + b * H, 1, H)};
                p.y[row * H + u] = Cell::output<DeviceMath, float>(fwd_in(p, Cell::kGates, row, b, u, pre, 1, hp + b * H),
                                                                   zs[b * H + u], ws_out(p.ws, Cell::kSlots, H, row, u));
                put_dropped(p, Cell::kGates, row, b, u);
            });
            grid_barrier(g);
        }
    }
    if (g.t_end == p.T && (g.phases & 2)) copy_final_states(p, g, H, us);
}

// Phases of a (reverse) step: 1 dz, dn and dh's direct part; 2 drh = W_hn^T dn, then dr and its share of
// dh; 3 dh_{t-1} += d[r,z] W_h[r,z].
RF_GLOBAL void gru_original_backward_kernel(BwdParams p, Grid g) {
    using Cell = rnnfast::GruOriginal;
    const int H = p.H;
    const long GH = static_cast<long>(Cell::kGates) * H;
    const Span us = own_units(H, g);
    for (int t = g.t_end - 1; t >= g.t_begin; --t) {
        const Step s = step_at(g, t);
        if (g.phases & 1) {
            for_each_unit(s, us, [&](int b, int u, long row) {
                const float dh = dh_total(p, H, b, u, row);
                p.dh[b * H + u] = Cell::backward_output<DeviceMath, float>(saved_at(p, Cell::kGates, Cell::kSlots, s, b, u), dh,
                                                                          grads_at(p, Cell::kGates, row, u));
            });
            grid_barrier(g);
        }
        if (g.phases & 2) {
            for_each_unit(s, us, [&](int b, int u, long row) {
                const float drh = dot(p.dxg + row * GH + 2 * H, 1, p.w_hh + 2L * H * H + u, H, H);
                p.dh[b * H + u] += Cell::backward_gates<DeviceMath, float>(saved_at(p, Cell::kGates, Cell::kSlots, s, b, u), drh,
                                                                          grads_at(p, Cell::kGates, row, u));
            });
            grid_barrier(g);
        }
        if (g.phases & 4) {
            for_each_unit(s, us, [&](int b, int u, long row) {
                if (!p.rec_mask) {
                    p.dh[b * H + u] += dot(p.dxg + row * GH, 1, p.w_hh + u, H, 2L * H);
                    return;
                }
                for (int q = 0; q < 2; ++q)
                    p.dh[b * H + u] += p.rec_mask[b * GH + q * H + u] *
                                       dot(p.dxg + row * GH + q * H, 1, p.w_hh + static_cast<long>(q) * H * H + u, H, H);
            });
            grid_barrier(g);
        }
    }
}

}  // namespace rnnfast_cuda
