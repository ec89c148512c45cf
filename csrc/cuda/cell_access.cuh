// cell_access.cuh: the device side of cells.h's contract: the math policy and the accessors through which a
// cell's pointwise forward/backward reads its inputs and writes the workspace and the gradients, for one
// hidden unit u of one token row (tensors as in launch.h; GH = G*H, S = P or H).
#pragma once

#include "../common/cells.h"
#include "skeleton.cuh"

namespace rnnfast_cuda {

struct DeviceMath {
    RF_DEVICE static float c(double v) { return static_cast<float>(v); }
    RF_DEVICE static float sigmoid(float x) { return 1.0f / (1.0f + rf::expf(-x)); }
    RF_DEVICE static float tanh(float x) { return rf::tanhf(x); }
    // NaN propagates as in torch: relu(NaN) = NaN, and its gradient passes (torch masks only where h <= 0).
    RF_DEVICE static float relu(float x) { return x < 0.0f ? 0.0f : x; }
    RF_DEVICE static float relu_grad(float h) { return h <= 0.0f ? 0.0f : 1.0f; }
};

// Forward inputs (cells.h's `in`): x(g) = xp[row, g*H + u] + b_ih[g*H + u]; h(g) = rec[g*rs] + b_hh[g*H + u],
// rec being the unit's recurrent products (gate stride rs); h_prev() = h_{t-1}[b, u]; h_read(g) = h_{t-1}[b, u]
// under gate g's recurrent dropout mask (mask: the row's at the unit, gate stride H; null without dropout).
struct FwdIn {
    const float *xp, *b_ih, *rec, *b_hh, *hp, *mask;
    int H, rs;
    RF_DEVICE float x(int g) const { return xp[g * H] + (b_ih ? b_ih[g * H] : 0.0f); }
    RF_DEVICE float h(int g) const { return rec[g * rs] + (b_hh ? b_hh[g * H] : 0.0f); }
    RF_DEVICE float h_prev() const { return *hp; }
    RF_DEVICE float h_read(int g) const { return mask ? *hp * mask[g * H] : *hp; }
};
// h_prev_row: h_{t-1}[b, :] (S features; read at u only by the cells whose S is H); b: the batch row.
RF_DEVICE FwdIn fwd_in(const FwdParams& p, int G, long row, int b, int u, const float* rec, int rs,
                       const float* h_prev_row) {
    return {p.xp + row * G * p.H + u, p.b_ih ? p.b_ih + u : nullptr, rec, p.b_hh ? p.b_hh + u : nullptr,
            h_prev_row + u, p.rec_mask ? p.rec_mask + (static_cast<long>(b) * G * p.H + u) : nullptr, p.H, rs};
}

// The workspace of a token row and unit (cells.h: ws[row*slots*H + s*H + u]); null in inference.
struct WsOut {
    float* at;
    int H;
    RF_DEVICE void put(int s, float v) const {
        if (at) at[s * H] = v;
    }
};
RF_DEVICE WsOut ws_out(float* ws, int slots, int H, long row, int u) {
    return {ws ? ws + row * slots * H + u : nullptr, H};
}

// What backward reads of the forward (cells.h's `sv`) for row b of step s and unit u.
struct Saved {
    const float *ws, *ws_prev, *hp, *c0, *h, *mask;  // ws_prev: the previous step's row, null at the first step
    int H;
    RF_DEVICE float get(int s) const { return ws[s * H]; }
    RF_DEVICE float h_prev() const { return *hp; }
    RF_DEVICE float h_read(int g) const { return mask ? *hp * mask[g * H] : *hp; }
    RF_DEVICE float drop(int g) const { return mask ? mask[g * H] : 1.0f; }
    RF_DEVICE float c_prev() const { return ws_prev ? ws_prev[rnnfast::Lstm::kC * H] : *c0; }
    RF_DEVICE float h_out() const { return *h; }
};
RF_DEVICE Saved saved_at(const BwdParams& p, int G, int slots, const Step& s, int b, int u) {
    const int H = p.H, S = p.P ? p.P : H;
    const long row = s.off + b, prev = s.prev < 0 ? -1 : s.prev + b;
    const float* ws = p.ws ? p.ws + u : nullptr;
    return {ws ? ws + row * slots * H : nullptr, ws && prev >= 0 ? ws + prev * slots * H : nullptr,
            prev < 0 ? p.h0 + b * S + u : p.y + prev * S + u, p.c0 ? p.c0 + b * H + u : nullptr,
            p.y + row * S + u, p.rec_mask ? p.rec_mask + (static_cast<long>(b) * G * H + u) : nullptr, H};
}

// The gradients of a token row and unit (cells.h's `gr`): dx w.r.t. the input pre-activations (dxg), dh
// w.r.t. the recurrent ones (dhg, the GRU only: elsewhere they are equal and dhg is null).
struct Grads {
    float *gx, *gh;
    int H;
    RF_DEVICE void dx(int g, float v) const { gx[g * H] = v; }
    RF_DEVICE void dh(int g, float v) const { gh[g * H] = v; }
    RF_DEVICE void both(int g, float v) const {
        gx[g * H] = v;
        if (gh) gh[g * H] = v;
    }
};
RF_DEVICE Grads grads_at(const BwdParams& p, int G, long row, int u) {
    const long at = row * G * p.H + u;
    return {p.dxg + at, p.dhg ? p.dhg + at : nullptr, p.H};
}

}  // namespace rnnfast_cuda
