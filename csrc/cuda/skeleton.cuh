// skeleton.cuh: what every CUDA recurrence kernel shares, written once: the block's share of the units, the
// walk over (row, unit) pairs, the dot products, the barriers, the step table, the carries and the final
// state copy. Each kernel (recurrence.cuh, recurrence_gru_original.cuh, recurrence_lstm_proj.cuh) then lists
// only its phases and barriers. Tensors as in launch.h.
//
// Work split (own_units, the one place it is written): block k owns hidden units [k*U, (k+1)*U) with all
// their gates; an LSTM projection's P features are cut the same way over the grid (own_features).
// Paths: a persistent launch runs every step (and every phase) with a grid barrier between phases; the
// per-step path launches each phase of each step on its own, the launch boundary being the barrier.
#pragma once

#include <cstdint>

#include "compat.cuh"
#include "launch.h"

namespace rnnfast_cuda {

// What the launcher (launch.cu's launch_steps) decides for one launch.
struct Grid {
    int U;                    // hidden units per block
    int t_begin, t_end;       // the steps this launch runs (backward: from t_end - 1 down)
    int persistent;           // 1: every step in this launch, grid barriers between phases
    int phases;               // bit k: run phase k of each step
    const int64_t *bs, *off;  // [T] each, device: active rows of step t, and its first token row
    float* scratch;           // [B, 2H], device: what a two-phase step's later phase reads (else null)
};

// A block's share [begin, begin + n) of `total` items cut in runs of `per` (n = 0 past the end).
struct Span {
    int begin, n;
};
RF_DEVICE Span block_span(int total, int per) {
    const int begin = static_cast<int>(blockIdx.x) * per;
    return {begin, begin < total ? (total - begin < per ? total - begin : per) : 0};
}
RF_DEVICE Span own_units(int H, const Grid& g) { return block_span(H, g.U); }
RF_DEVICE Span own_features(int P) {
    const int per = (P + static_cast<int>(gridDim.x) - 1) / static_cast<int>(gridDim.x);
    return block_span(P, per > 0 ? per : 1);
}

// Step t: `rows` active rows from token row `off`; `prev`: the previous step's first row, -1 at t = 0.
struct Step {
    int rows;
    long off, prev;
};
RF_DEVICE Step step_at(const Grid& g, int t) {
    return {static_cast<int>(g.bs[t]), g.off[t], t > 0 ? static_cast<long>(g.off[t - 1]) : -1L};
}

// f(b, j) for every row b < rows and item j < n, spread over the block's threads.
template <class F>
RF_DEVICE void for_each(int rows, int n, F&& f) {
    for (int i = threadIdx.x; i < rows * n; i += blockDim.x) f(i / n, i % n);
}

// f(b, u, row) for every active row b of step s (token row `row`) and every item u of the span.
template <class F>
RF_DEVICE void for_each_unit(const Step& s, Span sp, F&& f) {
    for_each(s.rows, sp.n, [&](int b, int j) { f(b, sp.begin + j, s.off + b); });
}

// sum_k a[k*sa] * b[k*sb], k < n: every recurrent product of the kernels.
RF_DEVICE float dot(const float* a, long sa, const float* b, long sb, long n) {
    float sum = 0.0f;
    for (long k = 0; k < n; ++k) sum += a[k * sa] * b[k * sb];
    return sum;
}

// The end of a phase whose results other blocks read: a grid barrier on the persistent path (the per-step
// path's launch boundary is one already).
RF_DEVICE void grid_barrier(const Grid& g) {
    if (g.persistent) rf::grid_sync();
}

// h_{t-1} [rows, S]: h0 at the first step, else the previous step's outputs.
RF_DEVICE const float* h_prev_rows(const Step& s, const float* h0, const float* y, int S) {
    return s.prev < 0 ? h0 : y + s.prev * S;
}

// With recurrent dropout: the rows of h_drop step s's product reads (h0's at the first step), G*H floats each;
// null without dropout.
RF_DEVICE const float* dropped_rows(const FwdParams& p, const Step& s, int G) {
    return p.rec_mask ? p.h_drop + (s.prev < 0 ? 0L : p.B + s.prev) * G * p.H : nullptr;
}

// With recurrent dropout: h_t[b, u] (token row `row`, already in y) under each gate's mask, for the next step's
// product; nothing without dropout.
RF_DEVICE void put_dropped(const FwdParams& p, int G, long row, int b, int u) {
    if (!p.rec_mask) return;
    const long GH = static_cast<long>(G) * p.H;
    for (int q = 0; q < G; ++q)
        p.h_drop[(p.B + row) * GH + q * p.H + u] = p.y[row * p.H + u] * p.rec_mask[b * GH + q * p.H + u];
}

// The whole gradient w.r.t. h_t[b, q] (S features): dy plus what step t+1 sent (dh_n at the last step).
RF_DEVICE float dh_total(const BwdParams& p, int S, int b, int q, long row) {
    return p.dh[b * S + q] + (p.dy ? p.dy[row * S + q] : 0.0f);
}

// The LSTM's running cell state starts as c0, for the block's units (first phase of the first step only:
// a per-step launch of a later phase must not reset it).
RF_DEVICE void init_cell_state(const FwdParams& p, const Grid& g, Span us) {
    if (g.t_begin != 0 || !(g.phases & 1) || !p.c_n) return;
    for_each(p.B, us.n, [&](int b, int j) { p.c_n[b * p.H + us.begin + j] = p.c0[b * p.H + us.begin + j]; });
}

// h_n[:, own] = each row's state after its own last step (S features), or h0 where a row ran no step.
// Row b's last step is the last t with bs[t] > b. Called by every thread after the last step.
RF_DEVICE void copy_final_states(const FwdParams& p, const Grid& g, int S, Span own) {
    __syncthreads();  // the block's outputs of the last step are written
    for_each(p.B, own.n, [&](int b, int j) {
        const int q = own.begin + j;
        int t_last = p.T - 1;
        while (t_last >= 0 && g.bs[t_last] <= b) --t_last;
        p.h_n[b * S + q] = t_last >= 0 ? p.y[(g.off[t_last] + b) * S + q] : p.h0[b * S + q];
    });
}

// The block's W_hh slices in shared memory (persistent path). Forward: its G*U rows, transposed,
// wsh[k*G*U + g*U + j] = W[g*H + u0 + j, k]; backward: its U columns, wsh[r*U + j] = W[r, u0 + j]; zero
// past the block's units.
RF_DEVICE void load_rows_transposed(const float* w, int G, int H, int U, Span us, float* wsh) {
    const int R = G * U;
    for (long i = threadIdx.x; i < static_cast<long>(H) * R; i += blockDim.x) {
        const int k = static_cast<int>(i / R), r = static_cast<int>(i % R), g = r / U, j = r % U;
        wsh[i] = j < us.n ? w[(g * H + us.begin + j) * static_cast<long>(H) + k] : 0.0f;
    }
}
RF_DEVICE void load_columns(const float* w, long rows, int H, int U, Span us, float* wsh) {
    for (long i = threadIdx.x; i < rows * U; i += blockDim.x) {
        const int j = static_cast<int>(i % U);
        wsh[i] = j < us.n ? w[(i / U) * H + us.begin + j] : 0.0f;
    }
}

}  // namespace rnnfast_cuda
