// kernels.h: the CPU kernels as the bindings see them: one table of entry points per instruction set,
// and select() to pick the best one this processor runs. No Python here, no allocation of outputs:
// callers pass validated, C-contiguous buffers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rnnfast::cpu {

// Tensors are in the packed-sequence layout documented in recurrence.h: batch_sizes[t] active rows at step t.
// The fields are named as in the CUDA kernels' FwdParams / BwdParams (csrc/cuda/launch.h), except the step count
// T_ (T names the element type here); the weights are packed for the CPU kernels.
template <typename T>
struct ForwardCall {
    int cell, T_, B, H;
    const int64_t* batch_sizes;
    const T *xp, *h0, *c0;
    const T* w_hh;  // W_hh packed for the forward product (pack_forward)
    const T *b_ih, *b_hh;
    T *y, *h_n, *c_n, *ws;    // ws null in inference
    int P = 0;                // LSTM proj_size (0: none); then h0, y, h_n have P features
    const T* w_hr = nullptr;  // W_hr (P, H) packed forward (panels over P)
    // Inference with bfloat16 recurrent weights (float32 only): W_hh packed by Bf16Kernels::pack_forward,
    // read instead of w_hh (then null) by the per-step product, whose state is rounded to bf16 each step.
    const uint32_t* w_hh_bf16 = nullptr;
    // Recurrent dropout (training; null: none, and always none with a projection): the
    // product of gate g reads h_{t-1}[b][k] * rec_mask[b][g*H + k] where it read h_{t-1}[b][k]. h_drop
    // [B + N, G*H]: rows b < B hold h0 under the mask (the caller's), row B + r is written here as y[r] under
    // its batch row's mask: what the next step's product reads, and what dW_hh pairs with.
    const T* rec_mask = nullptr;  // [B, G*H]
    T* h_drop = nullptr;
};

template <typename T>
struct BackwardCall {
    int cell, T_, B, H;
    const int64_t* batch_sizes;
    const T* w_hh;  // W_hh packed for the backward product (pack_backward)
    const T *h0, *c0, *y, *ws, *dy, *dh_n, *dc_n;  // dy, dh_n, dc_n may be null
    T *dxg, *dhg, *dh0, *dc0, *db_ih, *db_hh;     // dhg: GRU only; db_* accumulate, may be null
    int P = 0;                // LSTM proj_size (0: none)
    const T* w_hr = nullptr;  // W_hr (P, H) packed backward (panels over H)
    T* dh_all = nullptr;      // [N, P] gradient w.r.t. every h_t (what dW_hr needs)
    const T* rec_mask = nullptr;  // the forward's recurrent dropout mask [B, G*H], or null
};

// C (+)= A B with A(i,k) = a[i*a_rs + k*a_ks], B(k,j) = b[k*b_ks + j*b_ns], C row-major (ldc).
template <typename T>
struct GemmCall {
    ptrdiff_t M, N, K;
    const T* a; ptrdiff_t a_rs, a_ks;
    const T* b; ptrdiff_t b_ks, b_ns;
    T* c; ptrdiff_t ldc;
    bool accumulate;
    int variant = -1;  // index of the GEMM variant to run (the tuner's timings), -1: the one in force
};

// C (+)= A Bp, where Bp holds a matrix B (K x N) packed by pack_matrix (panels of NR columns).
template <typename T>
struct PackedGemmCall {
    ptrdiff_t M, N, K;
    const T* a; ptrdiff_t a_rs, a_ks;
    const T* bp;
    T* c; ptrdiff_t ldc;
    bool accumulate;
    int variant = -1;  // as in GemmCall
};

// A compiled way to run the GEMMs (csrc/cpu/gemm.h: GemmVariant). Every variant gives the same bits.
struct VariantInfo {
    const char* name;  // "<MR>x<NR>", then "/big" (a larger row block in L2) or "/tiles" (tiles outside panels)
    int mr;            // micro-tile rows
    int a_block;       // bytes of A kept in L2 per block
    bool tiles_outer;
};

template <typename T>
struct Table {
    int panel_width;                              // NR: packed layouts depend on it
    // A recurrent weight (G*H, K), K the state size (H, or proj_size); see recurrence.h.
    ptrdiff_t (*packed_size_forward)(int G, int H, int K);
    ptrdiff_t (*packed_size_backward)(int G, int H, int K);
    void (*pack_forward)(const T* w, int G, int H, int K, T* out);
    void (*pack_backward)(const T* w, int G, int H, int K, T* out);
    // n independent recurrences (a layer's two directions): n == 1 uses up to `threads` threads, n > 1 runs
    // the calls at once, one thread each.
    void (*forward)(const ForwardCall<T>* calls, int n, int threads);
    void (*backward)(const BackwardCall<T>* calls, int n, int threads);
    void (*gemm)(const GemmCall<T>&, int threads);
    // Packs B(k, n) = w[n*K + k] (B = w^T for a row-major w of shape (N, K)) into panels; size N_pad*K.
    void (*pack_matrix_t)(const T* w, ptrdiff_t N, ptrdiff_t K, T* out);
    void (*gemm_packed)(const PackedGemmCall<T>&, int threads);
    // The GEMM variants (the first is the default) and the two in force: which = 0 for the time-parallel
    // GEMMs, 1 for the recurrences' per-step products (only its mr counts there).
    int variant_count;
    VariantInfo (*variant_info)(int index);
    int (*chosen_variant)(int which);
    void (*choose_variant)(int which, int index);  // an index out of range is ignored
};

// The bfloat16 inference weights of float32 layers (gemm_bf16.h): W_hh (G*H, K) as pairs of bf16 values
// (two consecutive k in one 32-bit word), panels as pack_forward's; float32 accumulation.
struct Bf16Kernels {
    // 1 when this processor runs vdpbf16ps; 0 when the library computes the same products without it
    // (bit for bit: same rounding, same order of fused multiply-adds).
    int native;
    ptrdiff_t (*packed_size_forward)(int G, int H, int K);  // in 32-bit words
    void (*pack_forward)(const float* w, int G, int H, int K, uint32_t* out);
    // out[i] = x[i] rounded to bf16 (nearest even; denormals to zero, as the instructions do), the bits.
    void (*round)(const float* x, ptrdiff_t n, uint16_t* out);
};

struct Isa {
    const char* name;
    Table<float> f32;
    Table<double> f64;
    Bf16Kernels bf16;
    // GB/s of `threads` threads each reading its own `bytes` with this build's vector loads (best of `reps`
    // passes): the cache bandwidth the batch-1 floor is counted against (bench/floor.py).
    double (*read_gbps)(size_t bytes, int threads, int reps);
    // The multiply-adds a barrier crossing is worth when a recurrence picks its team (skeleton.h threads_for):
    // sets it when macs > 0, returns the value in force.
    int (*crossing_macs)(int macs);
    // How many team calls found the process's teams starved (threads.h TeamPressure), and whether teams run on
    // one thread now.
    int64_t (*starved_team_calls)();
    bool (*teams_solo)();
};

// The kernels of the widest instruction-set library this processor runs (RNNFAST_ISA=avx2|generic asks for
// a narrower one). The first call checks the CPU and only then loads that library (select.cpp); it throws
// std::runtime_error when the library cannot be loaded.
const Isa& select();

// memcmp(a, b, n) == 0, on up to `threads` threads for large n.
bool equal_bytes(const void* a, const void* b, size_t n, int threads);

// Round trip of a cache line between two of the kernels' threads, in ns (0 when only one thread runs):
// the mean over `iterations` round trips, or over those done within max_ms.
double core_round_trip_ns(int iterations, double max_ms);

// Bumped whenever Isa, Table or a call struct changes: a library of another version is refused.
constexpr int kAbiVersion = 8;

}  // namespace rnnfast::cpu

// The one symbol each instruction-set library (rnnfast_cpu_<isa>.so, built from isa_<isa>.cpp) exports:
// its kernel table, or null when `abi` is not the version it was built for.
extern "C" const rnnfast::cpu::Isa* rnnfast_cpu_kernels(int abi);
