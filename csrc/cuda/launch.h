// launch.h: the host entry points of the CUDA recurrences and what they take. Plain C++: the bindings include
// it without CUDA. Every pointer is device memory (host memory under the emulation) except batch_sizes.
//
// Shapes (N = sum(batch_sizes) token rows, G = the cell's gates, S = P if the LSTM has a projection else H,
// slots = rnnfast::workspace_slots(cell, P > 0)); the bindings check every one before a launch:
//   batch_sizes [T] (host, non-increasing, <= B)
//   Forward:  xp [N, G*H] = W_ih x (no bias)   h0 [B, S]   c0 [B, H] (LSTM)   weight_hh [G*H, S]
//             b_ih, b_hh [G*H] or null         weight_hr [P, H] or null
//             y [N, S]   h_n [B, S]   c_n [B, H] (LSTM: the running cell state, c0 in, c_n out)
//             ws [N, slots*H] or null (training workspace, layout by cells.h's Slot enums)
//             rec_mask [B, G*H] or null: recurrent dropout (not with a projection), gate g's product reads
//             h_{t-1}[b, k] * rec_mask[b, g*H + k]; h_drop [B + N, G*H]: rows b < B h0 under the mask (the
//             caller's), row B + r written as y[r] under its row's mask (what the next step reads, and dW_hh)
//   Backward: weight_hh, h0, c0, y, ws as the forward had them (ws required when slots > 0)
//             dy [N, S] or null   dh [B, S]: dh_n in, dh0 out   dc [B, H] (LSTM): dc_n in, dc0 out
//             dxg [N, G*H]: gradient w.r.t. the input pre-activations; dhg [N, G*H] (GRU only): w.r.t. the
//             recurrent ones; dh_all [N, P] (projection only): every dh_t; rec_mask as the forward's. Bias gradients are the column
//             sums of dxg / dhg, left to the caller (a deterministic reduction).
#pragma once

#include <cstdint>
#include <string>

#include "../common/cells.h"

namespace rnnfast_cuda {

struct FwdParams {
    rnnfast::CellId cell;
    int T, B, H, P;  // P: LSTM projection size, 0 for none
    const int64_t* batch_sizes;
    const float *xp, *h0, *c0, *w_hh, *b_ih, *b_hh, *w_hr;
    float *y, *h_n, *c_n, *ws;
    const float* rec_mask;
    float* h_drop;
};

struct BwdParams {
    rnnfast::CellId cell;
    int T, B, H, P;
    const int64_t* batch_sizes;
    const float *w_hh, *h0, *c0, *y, *ws, *dy, *w_hr;
    float *dh, *dc, *dxg, *dhg, *dh_all;
    const float* rec_mask;
};

enum Path { kAuto = 0, kPersistent = 1, kPerStep = 2 };

struct Request {
    int path = kAuto;         // kAuto picks persistent when the W_hh slice fits on chip and the grid co-resides
    int units_per_block = 0;  // 0: spread the units over the SMs
    int threads = 128;        // threads per block (a multiple of 32)
};

// Each returns "" on success or a message naming what failed; *used_path gets the path taken.
// stream: a cudaStream_t (CuPy's current stream), or null.
std::string forward(const Request& q, const FwdParams& p, void* stream, int* used_path);
std::string backward(const Request& q, const BwdParams& p, void* stream, int* used_path);

}  // namespace rnnfast_cuda
