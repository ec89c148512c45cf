// recurrence_two_phase.cuh: the CUDA kernels of the cells whose step needs two grid-wide phases, as on the
// CPU (csrc/cpu/recurrence_gru_original.h, recurrence_lstm_proj.h):
//   GRU, linear_before_reset=False: gates r, z and r*h -> barrier -> candidate from W_hn (r*h);
//   LSTM with proj_size P: gates, c and m = o*tanh(c) -> barrier -> h = W_hr m for a slice of P.
// Tensors as in recurrence.cuh, plus FwdParams/BwdParams' scratch, w_hr and dh_all (launch.h). The block
// split is the same (units [k*U, (k+1)*U) per block; for P, [k*Up, (k+1)*Up) with Up = ceil(P / blocks)).
// W_hh and W_hr are read from global memory (L2): only the single-phase cells keep W_hh on chip so far.
// `phases` selects what a launch runs: a persistent launch runs every phase of every step with a grid
// barrier between phases; the per-step path launches each phase of each step on its own.
#pragma once

#include "recurrence.cuh"

namespace rnnfast_cuda {

// phases: bit 0 = phase 1, bit 1 = phase 2 of each step.
RF_GLOBAL void forward_two_phase_kernel(FwdParams p, int phases) {
    const int H = p.H, G = p.G, B = p.B, P = p.P;
    const long GH = static_cast<long>(G) * H;
    const int S = P ? P : H;  // features of h
    int u_begin, p_begin;
    const int nu = own_range(H, p.U, u_begin);
    const int Up = P ? (P + static_cast<int>(gridDim.x) - 1) / static_cast<int>(gridDim.x) : 0;
    const int np_ = P ? own_range(P, Up, p_begin) : 0;
    float* rh = p.scratch;            // GRU original: r*h [B][H]; LSTM projection: m [B][H]
    float* zbuf = p.scratch + B * H;  // GRU original: z [B][H]
    const int slots = p.cell == kLstm ? 6 : 4;
    if (p.t_begin == 0 && p.cell == kLstm && (phases & 1))
        for (int i = threadIdx.x; i < B * nu; i += blockDim.x) {
            const int b = i / nu, u = u_begin + i % nu;
            p.c[b * H + u] = p.c0[b * H + u];
        }
    for (int t = p.t_begin; t < p.t_end; ++t) {
        const int Bt = static_cast<int>(p.bs[t]);
        const float* h_prev = t == 0 ? p.h0 : p.y + p.off[t - 1] * S;
        if (phases & 1) {
            for (int i = threadIdx.x; i < Bt * nu; i += blockDim.x) {
                const int b = i / nu, u = u_begin + i % nu;
                const long row = p.off[t] + b;
                const float* xp = p.xp + row * GH;
                float pre[4];
                const int gates = p.cell == kLstm ? 4 : 2;  // the GRU's candidate row waits for phase 2
                for (int g = 0; g < gates; ++g) {
                    const float* wr = p.w + (g * H + u) * static_cast<long>(S);
                    float sum = p.b_hh ? p.b_hh[g * H + u] : 0.0f;
                    for (int k = 0; k < S; ++k) sum += wr[k] * h_prev[b * S + k];
                    pre[g] = sum;
                }
                auto X = [&](int g) { return xp[g * H + u] + (p.b_ih ? p.b_ih[g * H + u] : 0.0f); };
                float* ws = p.ws ? p.ws + row * slots * H + u : nullptr;
                if (p.cell == kLstm) {
                    float ig, fg, gg, og, cn, m;
                    lstm_forward<DeviceMath>(X(0), X(1), X(2), X(3), pre[0], pre[1], pre[2], pre[3], p.c[b * H + u],
                                             ig, fg, gg, og, cn, m);
                    p.c[b * H + u] = cn;
                    rh[b * H + u] = m;
                    if (ws) { ws[0] = ig; ws[H] = fg; ws[2 * H] = gg; ws[3 * H] = og; ws[4 * H] = cn; ws[5 * H] = m; }
                } else {
                    float r, z, rhv;
                    gru_original_gates<DeviceMath>(X(0), X(1), pre[0], pre[1], h_prev[b * S + u], r, z, rhv);
                    rh[b * H + u] = rhv;
                    zbuf[b * H + u] = z;
                    if (ws) { ws[0] = r; ws[H] = z; ws[3 * H] = rhv; }
                }
            }
            if (p.persistent) rf::grid_sync();
        }
        if (phases & 2) {
            if (p.cell == kLstm) {  // h_t = W_hr m_t for this block's slice of P
                for (int i = threadIdx.x; i < Bt * np_; i += blockDim.x) {
                    const int b = i / np_, q = p_begin + i % np_;
                    const float* wr = p.w_hr + q * static_cast<long>(H);
                    float sum = 0.0f;
                    for (int k = 0; k < H; ++k) sum += wr[k] * rh[b * H + k];
                    p.y[(p.off[t] + b) * P + q] = sum;
                }
            } else {
                for (int i = threadIdx.x; i < Bt * nu; i += blockDim.x) {
                    const int b = i / nu, u = u_begin + i % nu;
                    const long row = p.off[t] + b;
                    const float* wr = p.w + (2 * H + u) * static_cast<long>(H);
                    float hn = p.b_hh ? p.b_hh[2 * H + u] : 0.0f;
                    for (int k = 0; k < H; ++k) hn += wr[k] * rh[b * H + k];
                    const float xn = p.xp[row * GH + 2 * H + u] + (p.b_ih ? p.b_ih[2 * H + u] : 0.0f);
                    float n;
                    p.y[row * H + u] = gru_original_output<DeviceMath>(xn, hn, zbuf[b * H + u], h_prev[b * H + u], n);
                    if (p.ws) p.ws[row * 4 * H + 2 * H + u] = n;
                }
            }
            if (p.persistent) rf::grid_sync();
        }
    }
    if (p.t_end == p.T && (phases & 2)) copy_final_states(p, S, P ? p_begin : u_begin, P ? np_ : nu);
}

// phases: bit 0 = phase 1, bit 1 = phase 2, bit 2 = phase 3 of each (reverse) step.
RF_GLOBAL void backward_two_phase_kernel(BwdParams p, int phases) {
    const int H = p.H, G = p.G, P = p.P;
    const long GH = static_cast<long>(G) * H;
    const int S = P ? P : H;
    int u_begin, p_begin;
    const int nu = own_range(H, p.U, u_begin);
    const int Up = P ? (P + static_cast<int>(gridDim.x) - 1) / static_cast<int>(gridDim.x) : 0;
    const int np_ = P ? own_range(P, Up, p_begin) : 0;
    for (int t = p.t_end - 1; t >= p.t_begin; --t) {
        const int Bt = static_cast<int>(p.bs[t]);
        const long off = p.off[t];
        if (phases & 1) {
            if (P) {  // dh_t for this block's slice of P: dy + what step t+1 sent (or dh_n)
                for (int i = threadIdx.x; i < Bt * np_; i += blockDim.x) {
                    const int b = i / np_, q = p_begin + i % np_;
                    p.dh_all[(off + b) * P + q] = p.dh[b * P + q] + (p.dy ? p.dy[(off + b) * P + q] : 0.0f);
                }
            } else {  // GRU original: dn, dz and the direct part of dh for the own units
                for (int i = threadIdx.x; i < Bt * nu; i += blockDim.x) {
                    const int b = i / nu, u = u_begin + i % nu;
                    const long row = off + b, prev = t == 0 ? -1 : p.off[t - 1] + b;
                    const float* ws = p.ws + row * 4 * H + u;
                    const float h_prev = prev < 0 ? p.h0[b * H + u] : p.y[prev * H + u];
                    const float dh_out = p.dh[b * H + u] + (p.dy ? p.dy[row * H + u] : 0.0f);
                    float dn, dz, dh;
                    gru_original_backward_output<DeviceMath>(ws[H], ws[2 * H], h_prev, dh_out, dn, dz, dh);
                    p.dxg[row * GH + H + u] = dz;
                    p.dxg[row * GH + 2 * H + u] = dn;
                    p.dh[b * H + u] = dh;
                }
            }
            if (p.persistent) rf::grid_sync();
        }
        if (phases & 2) {
            for (int i = threadIdx.x; i < Bt * nu; i += blockDim.x) {
                const int b = i / nu, u = u_begin + i % nu;
                const long row = off + b, prev = t == 0 ? -1 : p.off[t - 1] + b;
                if (P) {  // dm = dh_t W_hr, then the LSTM cell
                    float dm = 0.0f;
                    for (int q = 0; q < P; ++q) dm += p.dh_all[row * P + q] * p.w_hr[q * static_cast<long>(H) + u];
                    const float* ws = p.ws + row * 6 * H + u;
                    const float c_prev = prev < 0 ? p.c0[b * H + u] : p.ws[prev * 6 * H + 4 * H + u];
                    float di, df, dgg, dog, dc;
                    lstm_backward<DeviceMath>(ws[0], ws[H], ws[2 * H], ws[3 * H], c_prev, ws[4 * H], dm, p.dc[b * H + u],
                                              di, df, dgg, dog, dc);
                    float* dx = p.dxg + row * GH + u;
                    dx[0] = di; dx[H] = df; dx[2 * H] = dgg; dx[3 * H] = dog;
                    p.dc[b * H + u] = dc;
                } else {  // drh = W_hn^T dn, then dr and drh's share of dh
                    float drh = 0.0f;
                    for (int r = 0; r < H; ++r)
                        drh += p.dxg[row * GH + 2 * H + r] * p.w[(2 * H + r) * static_cast<long>(H) + u];
                    const float* ws = p.ws + row * 4 * H + u;
                    const float h_prev = prev < 0 ? p.h0[b * H + u] : p.y[prev * H + u];
                    float dr, dh = p.dh[b * H + u];
                    gru_original_backward_gates<DeviceMath>(ws[0], h_prev, drh, dr, dh);
                    p.dxg[row * GH + u] = dr;
                    p.dh[b * H + u] = dh;
                }
            }
            if (p.persistent) rf::grid_sync();
        }
        if (phases & 4) {
            if (P) {  // dh_{t-1} = dg_t W_hh for this block's slice of P (rows not running keep their carry)
                for (int i = threadIdx.x; i < Bt * np_; i += blockDim.x) {
                    const int b = i / np_, q = p_begin + i % np_;
                    float sum = 0.0f;
                    for (long r = 0; r < GH; ++r) sum += p.dxg[(off + b) * GH + r] * p.w[r * P + q];
                    p.dh[b * P + q] = sum;
                }
            } else {  // dh_{t-1} += d[r,z] W_h[r,z]
                for (int i = threadIdx.x; i < Bt * nu; i += blockDim.x) {
                    const int b = i / nu, u = u_begin + i % nu;
                    float sum = 0.0f;
                    for (long r = 0; r < 2 * H; ++r) sum += p.dxg[(off + b) * GH + r] * p.w[r * H + u];
                    p.dh[b * H + u] += sum;
                }
            }
            if (p.persistent) rf::grid_sync();
        }
    }
}

}  // namespace rnnfast_cuda
