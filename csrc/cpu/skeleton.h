// skeleton.h: what every CPU recurrence shares, written once: the thread split, the step table, the
// per-step products, the carries, the bias-gradient sums, the final states, and the accessors through which
// the cells of csrc/common/cells.h read and write memory. A recurrence (recurrence.h, recurrence_*.h) then
// lists only its phases and barriers.
//
// Layout (see recurrence.h for the tensors): a thread owns runs of NR-wide unit blocks; its scratch rows are
// `width` = (blocks it owns) * NR wide, so a unit u of the thread sits at column u - lo.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "../common/cells.h"
#include "gemm.h"
#include "gemm_bf16.h"
#include "kernels.h"
#include "threads.h"

namespace {

template <typename T>
using FwdArgs = rnnfast::cpu::ForwardCall<T>;
template <typename T>
using BwdArgs = rnnfast::cpu::BackwardCall<T>;

// ------------------------------------------------------------------------------------------- the split
// A thread's share of `size` units (hidden units, or the features of a projection) cut in blocks of NR.
// The only place where work is divided among threads: blocks [b0, b1), units [lo, hi), scratch width.
template <typename T>
struct Slice {
    static constexpr int NR = Tile<T>::NR;
    int b0, b1, lo, hi, width;
    Slice(int size, int tid, int team) {
        const int blocks = static_cast<int>(round_up(size, NR) / NR);
        b0 = blocks * tid / team;
        b1 = blocks * (tid + 1) / team;
        lo = b0 * NR;
        hi = std::min(size, b1 * NR);
        width = (b1 - b0) * NR;
    }
    static int blocks(int size) { return static_cast<int>(round_up(size, NR) / NR); }
};

// What one barrier crossing is worth in multiply-adds of a step. The default was measured here with a 64 ns
// core round trip (LSTM H=64 B=1 gains from 2 threads, RNN H=64 B=1 loses); the crossing grows with the round
// trip, which on a VM moves with the host's vCPU placement (64 to 380 ns seen on one machine, 129 ns on an
// Intel Xeon), so the tuner (rnnfast/_core/tuning.py) times a batch-1 training step on one thread and on two and sets it
// from those times. Only the team size
// depends on it: the recurrences fix the order of their sums by the default (their nominal split).
constexpr int kDefaultCrossingMacs = 8192;

inline std::atomic<int>& crossing_macs() {
    static std::atomic<int> macs{kDefaultCrossingMacs};
    return macs;
}

// Threads worth using for a step of this size: one per crossing's worth of multiply-adds, at most one per
// block (a thread needs a block). A negative request asks for exactly that many threads (tests use it to
// exercise the split).
inline int team_for_step(int requested, int B, int G, int H, int blocks, int crossing) {
    if (requested < 0) return std::max(1, std::min(-requested, blocks));
    const double macs = static_cast<double>(B) * G * H * H;
    const int nt = static_cast<int>(macs / std::max(crossing, 1));
    return std::max(1, std::min({requested, blocks, std::max(nt, 1)}));
}

// The split that fixes the order of a step's sums: from the thread count asked for and the shape alone.
inline int nominal_threads(int requested, int B, int G, int H, int blocks) {
    return team_for_step(requested, B, G, H, blocks, kDefaultCrossingMacs);
}

// The team that runs a step: fewer threads where the measured crossing is slow, one while the process's teams
// are starved (threads.h TeamPressure).
inline int threads_for(int requested, int B, int G, int H, int blocks) {
    const int asked = requested < 0 ? requested : team_request(requested);
    return team_for_step(asked, B, G, H, blocks, crossing_macs().load(std::memory_order_relaxed));
}

// ------------------------------------------------------------------------------------------- steps
// The packed-token step table: step t runs rows [off[t], off[t] + bs[t]).
struct Steps {
    const int64_t* bs;
    int T;
    std::vector<ptrdiff_t> off;  // T + 1 entries
    Steps(const int64_t* bs_, int T_) : bs(bs_), T(T_), off(static_cast<size_t>(T_) + 1, 0) {
        for (int t = 0; t < T; ++t) off[t + 1] = off[t] + bs[t];
    }
    int rows(int t) const { return static_cast<int>(bs[t]); }
    ptrdiff_t row(int t, int b) const { return off[t] + b; }
};

// Biases, or zeros where the layer has none, so that the cells always add one.
template <typename T>
struct Biases {
    AlignedVector<T> zeros;
    const T *ih, *hh;
    Biases(const T* b_ih, const T* b_hh, ptrdiff_t n) : zeros(b_ih && b_hh ? 0 : static_cast<size_t>(n), T(0)) {
        ih = b_ih ? b_ih : zeros.data();
        hh = b_hh ? b_hh : zeros.data();
    }
};

// Per-thread scratch, allocated before the team starts (nothing may throw inside a parallel region).
template <typename T>
struct TeamScratch {
    ptrdiff_t per_thread;
    AlignedVector<T> data;
    TeamScratch(ptrdiff_t per_thread_, int threads)
        : per_thread(per_thread_), data(static_cast<size_t>(per_thread_) * threads) {}
    T* of(int tid) { return data.data() + per_thread * tid; }
};

// ------------------------------------------------------------------------------------------- carries
// dst[b][j] = src[b][lo + j] for the thread's units (zero in the padding and where src is null).
template <typename T>
void load_carry(T* dst, const T* src, int B, int ld, const Slice<T>& s) {
    for (int b = 0; b < B; ++b)
        for (int j = 0; j < s.width; ++j)
            dst[b * s.width + j] = (src && s.lo + j < s.hi) ? src[b * ld + s.lo + j] : T(0);
}

// dst[b][u] = src[b][u - lo] for the thread's units.
template <typename T>
void store_carry(T* dst, const T* src, int B, int ld, const Slice<T>& s) {
    for (int b = 0; b < B; ++b)
        for (int u = s.lo; u < s.hi; ++u) dst[b * ld + u] = src[b * s.width + u - s.lo];
}

// h_n[:, lo:hi] = each row's state after its own last step (S features): the output of that step, or h0 for
// T = 0. Row b's last step is the last t with bs[t] > b; rows go longest first, so it only moves back.
template <typename T>
void copy_final_states(const FwdArgs<T>& a, const Steps& st, int S, int lo, int hi) {
    int t_last = a.T_ - 1;
    for (int b = 0; b < a.B; ++b) {
        while (t_last >= 0 && st.bs[t_last] <= b) --t_last;
        const T* last = t_last >= 0 ? a.y + st.row(t_last, b) * S : a.h0 + static_cast<ptrdiff_t>(b) * S;
        for (int q = lo; q < hi; ++q) a.h_n[b * S + q] = last[q];
    }
}

// ------------------------------------------------------------------------------------------- products
// The L1 data cache the per-step products plan for: 48 KB on Zen 4/5 and on Intel since Ice Lake (32 KB on
// older cores, where a slice planned as L1-resident streams from L2: slower, same results).
constexpr size_t kL1Bytes = 48 * 1024;

// One row of h times the P gate panels of a unit block (consecutive, `pstride` apart), k in [0, K): one broadcast
// of h[k] feeds P*NV independent sums (PerGate: panel p reads a row of its own, h + p*hstride: recurrent dropout).
// c[p*cstride + j] (+)= the sum, j < n.
template <typename T, int P, bool PerGate = false>
inline void gemv_panels(ptrdiff_t K, const T* h, const T* panels, ptrdiff_t pstride,
                        T* c, ptrdiff_t cstride, int n, bool accumulate, ptrdiff_t hstride = 0) {
    using V = typename Simd<T>::V;
    constexpr int W = Tile<T>::W, NV = Tile<T>::NV, NR = Tile<T>::NR;
    V acc[P][NV];
    for (int p = 0; p < P; ++p)
        for (int v = 0; v < NV; ++v) acc[p][v] = V{};
    for (ptrdiff_t k = 0; k < K; ++k) {
        const V hk = splat<V>(h[k]);
        for (int p = 0; p < P; ++p) {
            const V hp = PerGate ? splat<V>(h[p * hstride + k]) : hk;
            for (int v = 0; v < NV; ++v) acc[p][v] += hp * loadu<V>(panels + p * pstride + k * NR + v * W);
        }
    }
    for (int p = 0; p < P; ++p) {
        alignas(64) T tmp[NR];
        for (int v = 0; v < NV; ++v) storeu(tmp + v * W, acc[p][v]);
        T* cp = c + p * cstride;
        for (int j = 0; j < n; ++j) cp[j] = accumulate ? cp[j] + tmp[j] : tmp[j];
    }
}

// acc[b][(g - g0) * width + j] (+)= src[b][k0:k1] . W[g*size + lo + j][k0:k1] for gates [g0, g1) and the
// thread's units, W packed forward (pack_forward) with G gates and K columns; rows b < Bt, src row stride ld.
// `cols` bounds the last panel when acc is not padded scratch (a projection written in place); in_l1: the
// thread's panels stay in L1 from step to step (kL1Bytes), so the micro-kernel does not prefetch them.
// gstride: gate g reads src + g*gstride (recurrent dropout: each gate's h under its own mask), 0: one src.
template <typename T>
void forward_product(const T* wf, int G, int K, const Slice<T>& s, int g0, int g1, const T* src, ptrdiff_t ld,
                     int Bt, int k0, int k1, T* acc, ptrdiff_t ldc, bool accumulate, int cols = 1 << 30,
                     bool in_l1 = false, ptrdiff_t gstride = 0) {
    constexpr int NR = Tile<T>::NR;
    const int MR = variant_of<T>(-1, 1).mr, ku = ku_for(Bt);
    if (k1 <= k0) return;
    // Batch 1 with the weights in L1 (a small layer's step: latency, not bandwidth): the LSTM's 4 and the GRU's
    // 3 gate panels of a unit block in one pass over h, rather than one micro-kernel call per gate, each with its
    // own interleaved sums to reduce and its own store. Measured here (two threads, alternating processes):
    // LSTM T=1000 B=1 H=64 0.84 -> 0.66 ms with a slow core crossing, 0.377 -> 0.360 ms with a fast one; GRU
    // 0.48 -> 0.39 ms; LSTM T=100 B=1 H=64 77 -> 71 us. Another order of each sum than the micro-kernel's, fixed
    // by the shape: the same bits run to run.
    const int gates = g1 - g0;
    if (Bt == 1 && in_l1 && (gates == 3 || gates == 4)) {
        const ptrdiff_t pstride = static_cast<ptrdiff_t>(K) * NR;
        const T* h = src + g0 * gstride + k0;
        for (int ub = s.b0; ub < s.b1; ++ub) {
            const T* panel = wf + (static_cast<ptrdiff_t>(ub) * G + g0) * K * NR + static_cast<ptrdiff_t>(k0) * NR;
            T* c = acc + (ub - s.b0) * NR;
            const int n = std::min(NR, cols - ub * NR);
            if (gates == 4 && gstride)
                gemv_panels<T, 4, true>(k1 - k0, h, panel, pstride, c, s.width, n, accumulate, gstride);
            else if (gates == 4)
                gemv_panels<T, 4>(k1 - k0, h, panel, pstride, c, s.width, n, accumulate);
            else if (gstride)
                gemv_panels<T, 3, true>(k1 - k0, h, panel, pstride, c, s.width, n, accumulate, gstride);
            else
                gemv_panels<T, 3>(k1 - k0, h, panel, pstride, c, s.width, n, accumulate);
        }
        return;
    }
    // With a row of its own per gate (gstride) the gates go outermost, so that the rows one gate reads stay in
    // cache for all its unit blocks (read in turn, the G copies of h_{t-1} at B=64, H=512 outgrow L2).
    const int outer = gstride ? g1 - g0 : 1, inner = gstride ? 1 : g1 - g0;
    for (int go = 0; go < outer; ++go)
        for (int ub = s.b0; ub < s.b1; ++ub)
            for (int gi = 0; gi < inner; ++gi) {
                const int g = g0 + go + gi;
                const T* panel = wf + (static_cast<ptrdiff_t>(ub) * G + g) * K * NR + static_cast<ptrdiff_t>(k0) * NR;
                T* c = acc + (g - g0) * s.width + (ub - s.b0) * NR;
                const int n = std::min(NR, cols - ub * NR);
                for (int b = 0; b < Bt; b += MR)
                    ukernel<T>(std::min(MR, Bt - b), ku, k1 - k0, src + g * gstride + b * ld + k0, ld, 1, panel,
                               c + b * ldc, ldc, n, accumulate, in_l1);
            }
}

// The product of the bfloat16 inference mode (ForwardCall::wf_bf16 set; float32 only), in place of
// forward_product over the whole state: each thread rounds the state it multiplies to bf16 into a buffer of
// its own (all of it: cheaper than another barrier), then multiplies the bf16 panels (gemm_bf16.h).
// Inactive (false) for float32 weights.
template <typename T>
struct Bf16Product {
    const uint32_t* w;
    int G, K;
    ptrdiff_t Kp, per_thread;
    std::vector<uint32_t> rows;  // per thread: B rows of Kp pairs
    Bf16Product(const uint32_t* w_, int G_, int K_, int B, int threads)
        : w(std::is_same<T, float>::value ? w_ : nullptr), G(G_), K(K_), Kp(bf16_pairs(K_)),
          per_thread(static_cast<ptrdiff_t>(B) * Kp), rows(w ? static_cast<size_t>(per_thread) * threads : 0) {}
    explicit operator bool() const { return w != nullptr; }

    // acc[b][(g - g0) * width + j] = src[b][0:K] . W[g*size + lo + j][0:K] for gates [g0, g1), the thread's
    // units and rows b < Bt; src row stride ld.
    void operator()(int tid, const Slice<T>& s, int g0, int g1, const T* src, ptrdiff_t ld, int Bt, T* acc,
                    ptrdiff_t ldc) {
        if constexpr (std::is_same<T, float>::value) {
            uint32_t* hb = rows.data() + per_thread * tid;
            convert_rows_bf16(src, ld, Bt, K, hb);
            forward_product_bf16(w, G, Kp, s.b0, s.b1, s.width, g0, g1, hb, Bt, acc, ldc);
        }
    }
};

// dst[b][j] (+)= dg[b][r0 : r0+K] . W[r0 : r0+K][lo + j] for the thread's columns, W packed backward
// (pack_backward: panels of NR columns over R rows); rows b < Bt; dg row stride ld, dst row stride ldd.
// `cols` bounds the last panel when dst is not padded scratch (a projection written in place).
template <typename T>
void backward_product(const T* wb, ptrdiff_t R, const Slice<T>& s, const T* dg, ptrdiff_t ld, ptrdiff_t r0,
                      ptrdiff_t K, int Bt, T* dst, ptrdiff_t ldd, bool accumulate, int cols = 1 << 30) {
    constexpr int NR = Tile<T>::NR;
    const int MR = variant_of<T>(-1, 1).mr, ku = ku_for(Bt);
    for (int kb = s.b0; kb < s.b1; ++kb) {
        const T* panel = wb + kb * R * NR + r0 * NR;
        const int n = std::min(NR, cols - kb * NR);
        for (int b = 0; b < Bt; b += MR)
            ukernel<T>(std::min(MR, Bt - b), ku, K, dg + b * ld + r0, ld, 1, panel, dst + b * ldd + (kb - s.b0) * NR,
                       ldd, n, accumulate);
    }
}

// With recurrent dropout: dst[b][j] += sum over gates g < gates of (dg_g W_g)[b][lo + j] * mask[b][g*H + lo + j],
// each gate's share of dh_{t-1} under its own mask, for rows b < Bt and the thread's units ([rows][width] scratch,
// as backward_product's dst). W_hh packed backward over R = G*H rows; dg and mask have row stride R; tmp: one
// gate's product, [rows][width] scratch.
template <typename T>
void masked_backward_products(const T* wb, ptrdiff_t R, const Slice<T>& s, const T* dg, int gates, int H, int Bt,
                              const T* mask, T* tmp, T* dst) {
    for (int g = 0; g < gates; ++g) {
        backward_product(wb, R, s, dg, R, static_cast<ptrdiff_t>(g) * H, H, Bt, tmp, s.width, false);
        for (int b = 0; b < Bt; ++b) {
            T* d = dst + static_cast<ptrdiff_t>(b) * s.width;
            const T* x = tmp + static_cast<ptrdiff_t>(b) * s.width;
            const T* m = mask + b * R + static_cast<ptrdiff_t>(g) * H + s.lo;
            for (int j = 0; j < s.hi - s.lo; ++j) d[j] += x[j] * m[j];
        }
    }
}

// ------------------------------------------------------------------------------------------- unit walk
// The math policy of a value type: vector math for SIMD vectors of T, scalar math for T itself.
template <typename T, typename V>
using MathOf = std::conditional_t<std::is_same<V, T>::value, ScalarMath<T>, VecMath<T>>;

// Calls f(V{}, u) for the units [u0, u1): whole SIMD vectors first (V = Simd<T>::V), then the tail one unit
// at a time (V = T). Unit blocks start at multiples of the vector width, so which units take the scalar tail
// does not depend on the thread split.
template <typename T, typename F>
inline void for_each_unit(int u0, int u1, F&& f) {
    constexpr int W = Simd<T>::W;
    int u = u0;
    for (; u + W <= u1; u += W) f(typename Simd<T>::V{}, u);
    for (; u < u1; ++u) f(T{}, u);
}

template <typename V, typename T>
inline V ld(const T* p) {
    if constexpr (std::is_same<V, T>::value) return *p; else return loadu<V>(p);
}
template <typename V, typename T>
inline void st(T* p, V v) {
    if constexpr (std::is_same<V, T>::value) *p = v; else storeu(p, v);
}

// With recurrent dropout: the rows of h_drop that step t's product reads (h0's, then the previous step's).
template <typename T>
const T* dropped_prev(const FwdArgs<T>& a, const Steps& steps, int t, ptrdiff_t GH) {
    return a.h_drop + (t == 0 ? 0 : a.B + steps.row(t - 1, 0)) * GH;
}

// With recurrent dropout: the G copies of h (token `row`, batch row b, units from u) under the G masks, for the
// next step's product (h_drop row B + row).
template <typename V, typename T>
inline __attribute__((always_inline)) void put_dropped(const FwdArgs<T>& a, int G, ptrdiff_t row, int b, int u, V h) {
    const ptrdiff_t GH = static_cast<ptrdiff_t>(G) * a.H;
    for (int g = 0; g < G; ++g)
        st(a.h_drop + (a.B + row) * GH + g * a.H + u, h * ld<V>(a.rec_mask + b * GH + g * a.H + u));
}

// ------------------------------------------------------------------------------------------- accessors
// What cells.h's pointwise functions read and write, for one token row and the units [u, u + lanes of V).
// Pointers are already offset to unit u (acc to its scratch column); H is the stride between gates/slots.

// Forward inputs: x = the token's input projection + b_ih, h = the recurrent sums + b_hh; mask: the row's
// recurrent dropout mask at the unit (gate stride H), or null.
template <typename T, typename V>
struct In {
    const T *xp, *bi, *acc, *bh, *hp, *mask;
    int H, width;
    V x(int g) const { return ld<V>(xp + g * H) + ld<V>(bi + g * H); }
    V h(int g) const { return ld<V>(acc + g * width) + ld<V>(bh + g * H); }
    V h_prev() const { return ld<V>(hp); }
    V h_read(int g) const { return mask ? ld<V>(hp) * ld<V>(mask + g * H) : ld<V>(hp); }
};

// The workspace of a token row, written in training, not at all in inference (p null).
template <typename T, typename V>
struct WsOut {
    T* p;
    int H;
    void put(int slot, V v) const {
        if (p) st(p + slot * H, v);
    }
};

// The saved forward of a token row, for backward. prev: the same batch row's workspace one step earlier
// (null at its first step, where c_{t-1} = c0).
template <typename T, typename V>
struct Saved {
    const T *ws, *prev, *c0, *hp, *y, *mask;  // mask as In's
    int H;
    V get(int slot) const { return ld<V>(ws + slot * H); }
    V h_prev() const { return ld<V>(hp); }
    V h_read(int g) const { return mask ? ld<V>(hp) * ld<V>(mask + g * H) : ld<V>(hp); }
    V drop(int g) const { return mask ? ld<V>(mask + g * H) : splat<V>(T(1)); }
    V h_out() const { return ld<V>(y); }
    V c_prev() const { return prev ? ld<V>(prev + rnnfast::Lstm::kC * H) : ld<V>(c0); }
};

// Gate gradients of a token row: dx w.r.t. the input pre-activations, dh w.r.t. the recurrent ones (a buffer
// of its own only for the GRU, whose candidate's two differ; else null and the product reads dx). The bias
// sums read them back afterwards (BiasSums::add_step).
template <typename T, typename V>
struct Grads {
    T *gx, *gh;
    int H;
    void dx(int g, V v) const { st(gx + g * H, v); }
    void dh(int g, V v) const {
        if (gh) st(gh + g * H, v);
    }
    void both(int g, V v) const { dx(g, v); dh(g, v); }
};

// Bias-gradient sums over the steps, for all G*H entries (each thread touches only its own units, so no
// two threads write the same element), added into db_ih / db_hh once at the end. Once a step's walk has
// written its gate gradients, add_step adds that step's rows in, row by row in order. hh is summed apart only
// where the recurrent gradients have a buffer of their own (the GRU's dhg); elsewhere db_hh's sum is db_ih's.
//
// A pass of its own, not a running sum in the walk: there a read-modify-write of the sums for every token row
// fed each row's store to the next row's load of the same address, 8 of them a row beside the 4 gradient
// stores; LSTM H=64 B=64 spent 60% of its backward walk on them (measured: 43 against 18 thousand TSC cycles a
// step on Zen 5). Here the sums stay in registers while the rows, just written, stream past from L1/L2.
template <typename T>
struct BiasSums {
    const T* dhg;  // the recurrent gate gradients where they differ from dxg (the GRU's), else null
    AlignedVector<T> ih, hh;
    BiasSums(ptrdiff_t n, const T* dhg_)
        : dhg(dhg_), ih(static_cast<size_t>(n), T(0)), hh(dhg_ ? static_cast<size_t>(n) : 0, T(0)) {}

    // Adds the gate gradients of step t's rows (dxg, and dhg where there is one) for the thread's units.
    template <int G>
    void add_step(const BwdArgs<T>& a, const Steps& steps, int t, const Slice<T>& s) {
        const ptrdiff_t GH = static_cast<ptrdiff_t>(G) * a.H, first = steps.row(t, 0);
        add_rows<G>(ih.data(), a.dxg + first * GH, GH, steps.rows(t), a.H, s.lo, s.hi);
        if (dhg) add_rows<G>(hh.data(), dhg + first * GH, GH, steps.rows(t), a.H, s.lo, s.hi);
    }

    void flush(const BwdArgs<T>& a, int G, const Slice<T>& s) const {
        const T* sum_hh = dhg ? hh.data() : ih.data();
        for (int g = 0; g < G; ++g)
            for (int u = s.lo; u < s.hi; ++u) {
                if (a.db_ih) a.db_ih[g * a.H + u] += ih[g * a.H + u];
                if (a.db_hh) a.db_hh[g * a.H + u] += sum_hh[g * a.H + u];
            }
    }

  private:
    // sum[g*H + u] += src[0][g*H + u] + src[1][g*H + u] + ... for units [lo, hi) of every gate, U vectors of
    // units at a time: G*U independent add chains (about 8) hide the add latency.
    template <int G>
    static void add_rows(T* sum, const T* src, ptrdiff_t stride, int rows, int H, int lo, int hi) {
        using V = typename Simd<T>::V;
        constexpr int W = Simd<T>::W, U = G >= 8 ? 1 : 8 / G;
        int u = lo;
        for (; u + U * W <= hi; u += U * W) add_cols<G, V, U>(sum, src, stride, rows, H, u);
        for (; u + W <= hi; u += W) add_cols<G, V, 1>(sum, src, stride, rows, H, u);
        for (; u < hi; ++u) add_cols<G, T, 1>(sum, src, stride, rows, H, u);
    }
    template <int G, typename V, int U>
    static void add_cols(T* sum, const T* src, ptrdiff_t stride, int rows, int H, int u) {
        constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
        V acc[G][U];
        for (int g = 0; g < G; ++g)
            for (int j = 0; j < U; ++j) acc[g][j] = ld<V>(sum + g * H + u + j * L);
        for (int b = 0; b < rows; ++b) {
            const T* r = src + b * stride + u;
            for (int g = 0; g < G; ++g)
                for (int j = 0; j < U; ++j) acc[g][j] += ld<V>(r + g * H + j * L);
        }
        for (int g = 0; g < G; ++g)
            for (int j = 0; j < U; ++j) st(sum + g * H + u + j * L, acc[g][j]);
    }
};

// The value type of an accessor (what its cell functions take), and the math policy for it.
template <class Acc>
using ValueOf = decltype(std::declval<const Acc&>().h_prev());
template <typename T, class Acc>
using MathFor = MathOf<T, ValueOf<Acc>>;

// Forward: calls f(in, ws, b, u, col) for every row b of step t and every unit u of the thread (col = its
// scratch column), with the cell accessors over the gate sums acc [rows][G][width] (row stride ldc), the
// biases, h_{t-1} (row stride H; null where the cell never reads it) and the workspace (S slots a row).
template <typename T, int G, typename F>
void walk_forward(const FwdArgs<T>& a, const Steps& steps, int t, const Slice<T>& s, const Biases<T>& bias,
                  const T* acc, ptrdiff_t ldc, const T* h_prev, int S, F&& f) {
    const int H = a.H;
    for (int b = 0; b < steps.rows(t); ++b) {
        const ptrdiff_t row = steps.row(t, b);
        T* ws = a.ws ? a.ws + row * S * H : nullptr;
        for_each_unit<T>(s.lo, s.hi, [&](auto v, int u) {
            using V = decltype(v);
            const int col = u - s.lo;
            const In<T, V> in{a.xp + row * G * H + u, bias.ih + u, acc + b * ldc + col, bias.hh + u,
                              h_prev ? h_prev + static_cast<ptrdiff_t>(b) * H + u : nullptr,
                              a.rec_mask ? a.rec_mask + static_cast<ptrdiff_t>(b) * G * H + u : nullptr, H, s.width};
            f(in, WsOut<T, V>{ws ? ws + u : nullptr, H}, b, u, col);
        });
    }
}

// The whole gradient w.r.t. h_t of a token row's units: the carry from step t+1 (or dh_n) plus dy.
template <typename V, typename T>
inline V dh_total(const BwdArgs<T>& a, ptrdiff_t row, int u, const T* carry) {
    const V dh = ld<V>(carry);
    return a.dy ? dh + ld<V>(a.dy + row * a.H + u) : dh;
}

// Backward: calls f(sv, gr, b, u, col) for every row b of step t and every unit u of the thread (col = its
// column in the [rows][width] carries), with the saved forward (S workspace slots a row) and the gradient
// writers: dxg, dhg (null: the cell's recurrent gradients are dxg's). h_{t-1} and h_t are
// offered per unit only where h has H features (not behind an LSTM projection: reads_h false).
template <typename T, int G, typename F>
void walk_backward(const BwdArgs<T>& a, const Steps& steps, int t, const Slice<T>& s, int S, T* dhg, bool reads_h,
                   F&& f) {
    const int H = a.H;
    const ptrdiff_t GH = static_cast<ptrdiff_t>(G) * H;
    for (int b = 0; b < steps.rows(t); ++b) {
        const ptrdiff_t row = steps.row(t, b), prev = t == 0 ? -1 : steps.row(t - 1, b);
        const T* hp = !reads_h ? nullptr : prev >= 0 ? a.y + prev * H : a.h0 + static_cast<ptrdiff_t>(b) * H;
        const T* y = reads_h ? a.y + row * H : nullptr;
        for_each_unit<T>(s.lo, s.hi, [&](auto v, int u) {
            using V = decltype(v);
            const Saved<T, V> sv{a.ws ? a.ws + row * S * H + u : nullptr,
                                 prev >= 0 && a.ws ? a.ws + prev * S * H + u : nullptr,
                                 a.c0 ? a.c0 + b * H + u : nullptr, hp ? hp + u : nullptr, y ? y + u : nullptr,
                                 a.rec_mask ? a.rec_mask + b * GH + u : nullptr, H};
            const Grads<T, V> gr{a.dxg + row * GH + u, dhg ? dhg + row * GH + u : nullptr, H};
            f(sv, gr, b, u, b * s.width + u - s.lo);
        });
    }
}

}  // namespace
