// launch.h: the host entry points of the CUDA recurrences and their parameters (recurrence.cuh documents
// the tensors). Plain C++: the bindings include it without CUDA.
#pragma once

#include <cstdint>
#include <string>

namespace rnnfast_cuda {

enum Cell { kRnnTanh = 0, kRnnRelu = 1, kLstm = 2, kGru = 3, kGruOriginal = 4 };

struct FwdParams {
    int cell, G, T, B, H, U;  // U: units per block
    int t_begin, t_end;       // the steps this launch runs
    int persistent;           // 1: W slice in shared memory and a grid barrier per step
    const int64_t *bs, *off;
    const float *xp, *h0, *c0, *w, *b_ih, *b_hh;
    float *y, *h_n, *c, *ws;
    // The two-phase cells (recurrence_two_phase.cuh): the LSTM projection W_hr [P, H] (P = 0: none), and a
    // scratch [B, 2*H] for what the second phase of a step reads (GRU original: r*h and z; LSTM: m).
    int P;
    const float* w_hr;
    float* scratch;
};

struct BwdParams {
    int cell, G, T, B, H, U;
    int t_begin, t_end;  // the steps this launch runs, in reverse
    int persistent;
    const int64_t *bs, *off;
    const float *w, *h0, *c0, *y, *ws, *dy;
    float *dh, *dc, *dxg, *dhg;
    int P;                // LSTM projection: dh, h0, y, dy have P features; dh_all [N, P] gets every dh_t
    const float* w_hr;
    float* dh_all;
};


enum Path { kAuto = 0, kPersistent = 1, kPerStep = 2 };

struct Request {
    int path = kAuto;          // kAuto picks persistent when the W_hh slice fits on chip and the grid co-resides
    int units_per_block = 0;   // 0: spread the units over the SMs
    int threads = 128;         // threads per block (a multiple of 32)
    const int64_t* steps;      // host [2*T]: bs then off
};

// Each returns "" on success or a message naming what failed; *used_path gets the path taken.
// stream: a cudaStream_t (CuPy's current stream), or null.
std::string forward(const Request& q, const FwdParams& p, void* stream, int* used_path);
std::string backward(const Request& q, const BwdParams& p, void* stream, int* used_path);

}  // namespace rnnfast_cuda
