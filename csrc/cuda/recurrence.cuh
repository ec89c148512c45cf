// recurrence.cuh: the CUDA recurrence kernels (float32), forward and BPTT backward, for RNN tanh/relu,
// LSTM and GRU (torch form), in the packed-sequence layout of the CPU kernels (csrc/cpu/recurrence.h):
//   bs[T], off[T]    active rows per step and the first token row of each step (device memory)
//   xp   [N, G*H]    W_ih x for every token (no bias)      w  [G*H, H]  W_hh, row-major, as the layer holds it
//   h0   [B, H]      c0 [B, H] (LSTM)                       b_ih, b_hh [G*H] or null
//   y    [N, H]      h_n [B, H]    c [B, H]: the running cell state, starts as c0 and ends as c_n
//   ws   [N, S*H]    training workspace, as on the CPU (LSTM: i, f, g, o, c; GRU: r, z, n, hn)
// Backward:
//   dy [N, H] or null; dh [B, H]: starts as dh_n, ends as dh0; dc [B, H]: starts as dc_n, ends as dc0
//   dxg [N, G*H], dhg [N, G*H] (GRU; other cells: dxg). Bias gradients are the column sums of dxg / dhg,
//   left to the caller (a reduction, deterministic, unlike atomics).
//
// Work split: block k owns hidden units [k*U, (k+1)*U) with all their gates. The persistent kernels run
// every step in one cooperative launch: the block's slice of W_hh (forward: its G*U rows, backward: its U
// columns) is loaded into shared memory once, and the grid meets at one grid-wide barrier per step. The
// per-step kernels are the same code with W_hh read from global memory and a launch boundary in place of
// the grid barrier.
#pragma once

#include <cstdint>

#include "../common/cells.h"
#include "compat.cuh"
#include "launch.h"

namespace rnnfast_cuda {

struct DeviceMath {
    RF_DEVICE static float c(double v) { return static_cast<float>(v); }
    RF_DEVICE static float sigmoid(float x) { return 1.0f / (1.0f + rf::expf(-x)); }
    RF_DEVICE static float tanh(float x) { return rf::tanhf(x); }
    // NaN propagates as in torch: relu(NaN) = NaN, and its gradient passes (torch masks only where h <= 0).
    RF_DEVICE static float relu(float x) { return x < 0.0f ? 0.0f : x; }
    RF_DEVICE static float relu_grad(float h) { return h <= 0.0f ? 0.0f : 1.0f; }
};

RF_DEVICE int slots_of(int cell) { return cell == kLstm ? 5 : cell == kGru ? 4 : 0; }

// This block's share [begin, begin + n) of `total` items cut in runs of `per`; returns n (0 past the end).
RF_DEVICE int own_range(int total, int per, int& begin) {
    begin = static_cast<int>(blockIdx.x) * per;
    return begin < total ? (total - begin < per ? total - begin : per) : 0;
}

// h_n[:, first:first+own] = each row's state after its own last step (S features), or h0 for T = 0.
// Row b's last step is the last t with bs[t] > b.
RF_DEVICE void copy_final_states(const FwdParams& p, int S, int first, int own) {
    for (int i = threadIdx.x; i < p.B * own; i += blockDim.x) {
        const int b = i / own, q = first + i % own;
        int t_last = p.T - 1;
        while (t_last >= 0 && p.bs[t_last] <= b) --t_last;
        p.h_n[b * S + q] = t_last >= 0 ? p.y[(p.off[t_last] + b) * S + q] : p.h0[b * S + q];
    }
}

// Shared memory of a block, in floats.
inline int forward_shared_floats(int G, int H, int U, int B, bool persistent) {
    return (persistent ? G * U * H : 0) + B * G * U;
}
inline int backward_shared_floats(int G, int H, int U, bool persistent) { return persistent ? G * H * U : 0; }

// phases: unused (one phase a step); there for the common launcher.
RF_GLOBAL void forward_kernel(FwdParams p, int /*phases*/) {
    const int U = p.U, H = p.H, G = p.G, R = G * U;
    int u_begin;
    const int nu = own_range(H, U, u_begin);
    const long GH = static_cast<long>(G) * H;
    float* wsh = rf::dyn_shared<float>();  // [H][R]: W_hh rows of the block, transposed
    float* acc = wsh + (p.persistent ? static_cast<long>(H) * R : 0);  // [B][R]
    if (p.persistent)
        for (long i = threadIdx.x; i < static_cast<long>(H) * R; i += blockDim.x) {
            const int k = static_cast<int>(i / R), r = static_cast<int>(i % R), g = r / U, j = r % U;
            wsh[i] = j < nu ? p.w[(g * H + u_begin + j) * static_cast<long>(H) + k] : 0.0f;
        }
    if (p.t_begin == 0 && p.cell == kLstm)
        for (int i = threadIdx.x; i < p.B * nu; i += blockDim.x) {
            const int b = i / nu, u = u_begin + i % nu;
            p.c[b * H + u] = p.c0[b * H + u];
        }
    __syncthreads();
    for (int t = p.t_begin; t < p.t_end; ++t) {
        const int Bt = static_cast<int>(p.bs[t]);
        const float* h_prev = t == 0 ? p.h0 : p.y + p.off[t - 1] * H;
        for (int i = threadIdx.x; i < Bt * R; i += blockDim.x) {
            const int b = i / R, r = i % R, g = r / U, j = r % U;
            float sum = 0.0f;
            if (p.persistent) {
                for (int k = 0; k < H; ++k) sum += wsh[k * R + r] * h_prev[b * H + k];
            } else if (j < nu) {
                const float* wr = p.w + (g * H + u_begin + j) * static_cast<long>(H);
                for (int k = 0; k < H; ++k) sum += wr[k] * h_prev[b * H + k];
            }
            acc[b * R + r] = sum;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < Bt * nu; i += blockDim.x) {
            const int b = i / nu, j = i % nu, u = u_begin + j;
            const long row = p.off[t] + b;
            const float* xp = p.xp + row * GH;
            auto X = [&](int g) { return xp[g * H + u] + (p.b_ih ? p.b_ih[g * H + u] : 0.0f); };
            auto Rg = [&](int g) { return acc[b * R + g * U + j] + (p.b_hh ? p.b_hh[g * H + u] : 0.0f); };
            float* ws = p.ws ? p.ws + row * slots_of(p.cell) * H + u : nullptr;
            float h;
            if (p.cell == kRnnTanh) {
                h = rnn_tanh_forward<DeviceMath>(X(0), Rg(0));
            } else if (p.cell == kRnnRelu) {
                h = rnn_relu_forward<DeviceMath>(X(0), Rg(0));
            } else if (p.cell == kLstm) {
                float ig, fg, gg, og, cn;
                lstm_forward<DeviceMath>(X(0), X(1), X(2), X(3), Rg(0), Rg(1), Rg(2), Rg(3), p.c[b * H + u], ig, fg,
                                         gg, og, cn, h);
                p.c[b * H + u] = cn;
                if (ws) { ws[0] = ig; ws[H] = fg; ws[2 * H] = gg; ws[3 * H] = og; ws[4 * H] = cn; }
            } else {
                float r, z, n;
                const float hn = Rg(2);
                gru_forward<DeviceMath>(X(0), X(1), X(2), Rg(0), Rg(1), hn, h_prev[b * H + u], r, z, n, h);
                if (ws) { ws[0] = r; ws[H] = z; ws[2 * H] = n; ws[3 * H] = hn; }
            }
            p.y[row * H + u] = h;
        }
        if (p.persistent) rf::grid_sync(); else __syncthreads();
    }
    if (p.t_end == p.T) copy_final_states(p, H, u_begin, nu);
}

// phases: bit 0 = the pointwise phase, bit 1 = the W_hh product (the per-step path launches them apart).
RF_GLOBAL void backward_kernel(BwdParams p, int phases) {
    const int U = p.U, H = p.H, G = p.G;
    const long GH = static_cast<long>(G) * H;
    int u_begin;
    const int nu = own_range(H, U, u_begin);
    float* wsh = rf::dyn_shared<float>();  // [G*H][U]: W_hh columns of the block
    if (p.persistent) {
        for (long i = threadIdx.x; i < GH * U; i += blockDim.x) {
            const long r = i / U;
            const int j = static_cast<int>(i % U);
            wsh[i] = j < nu ? p.w[r * H + u_begin + j] : 0.0f;
        }
        __syncthreads();
    }
    const float* dg_all = p.cell == kGru ? p.dhg : p.dxg;
    for (int t = p.t_end - 1; t >= p.t_begin; --t) {
        const int Bt = static_cast<int>(p.bs[t]);
        if (phases & 1) {
            for (int i = threadIdx.x; i < Bt * nu; i += blockDim.x) {
                const int b = i / nu, u = u_begin + i % nu;
                const long row = p.off[t] + b, prev = t == 0 ? -1 : p.off[t - 1] + b;
                float dh = p.dh[b * H + u] + (p.dy ? p.dy[row * H + u] : 0.0f);
                float* dx = p.dxg + row * GH + u;
                if (p.cell == kRnnTanh || p.cell == kRnnRelu) {
                    const float h = p.y[row * H + u];
                    dx[0] = p.cell == kRnnTanh ? rnn_tanh_backward<DeviceMath>(h, dh) : rnn_relu_backward<DeviceMath>(h, dh);
                    p.dh[b * H + u] = 0.0f;
                } else if (p.cell == kLstm) {
                    const float* ws = p.ws + row * 5 * H + u;
                    const float c_prev = prev < 0 ? p.c0[b * H + u] : p.ws[prev * 5 * H + 4 * H + u];
                    float di, df, dgg, dog, dc;
                    lstm_backward<DeviceMath>(ws[0], ws[H], ws[2 * H], ws[3 * H], c_prev, ws[4 * H], dh, p.dc[b * H + u],
                                              di, df, dgg, dog, dc);
                    dx[0] = di; dx[H] = df; dx[2 * H] = dgg; dx[3 * H] = dog;
                    p.dc[b * H + u] = dc;
                    p.dh[b * H + u] = 0.0f;
                } else {
                    const float* ws = p.ws + row * 4 * H + u;
                    const float h_prev = prev < 0 ? p.h0[b * H + u] : p.y[prev * H + u];
                    float dr, dz, dnx, dnh, dhp;
                    gru_backward<DeviceMath>(ws[0], ws[H], ws[2 * H], ws[3 * H], h_prev, dh, dr, dz, dnx, dnh, dhp);
                    dx[0] = dr; dx[H] = dz; dx[2 * H] = dnx;
                    float* dhg = p.dhg + row * GH + u;
                    dhg[0] = dr; dhg[H] = dz; dhg[2 * H] = dnh;
                    p.dh[b * H + u] = dhp;
                }
            }
            if (p.persistent) rf::grid_sync();
        }
        if (phases & 2) {
            // dh_{t-1}[:, own units] += dg_t W_hh[:, own units]
            const float* dg = dg_all + p.off[t] * GH;
            for (int i = threadIdx.x; i < Bt * nu; i += blockDim.x) {
                const int b = i / nu, j = i % nu;
                float sum = 0.0f;
                if (p.persistent) {
                    for (long r = 0; r < GH; ++r) sum += dg[b * GH + r] * wsh[r * U + j];
                } else {
                    for (long r = 0; r < GH; ++r) sum += dg[b * GH + r] * p.w[r * H + u_begin + j];
                }
                p.dh[b * H + u_begin + j] += sum;
            }
            __syncthreads();
        }
    }
}

}  // namespace rnnfast_cuda
