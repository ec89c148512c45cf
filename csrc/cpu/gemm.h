// gemm.h: the register-blocked GEMM micro-kernel, weight-panel packing, and a blocked, threaded GEMM.
//
// One micro-kernel serves both the per-step recurrent products inside the recurrence kernels and the
// large time-parallel GEMMs (input projection, dx, dW). It computes an m x n tile (m <= MR, n <= NR) of
//     C (+)= A * Bp
// where A is read through two strides (A[i][k] = a[i*a_rs + k*a_ks], so a row-major matrix, its transpose,
// or a packed MR-row block all work) and Bp is a packed panel of NR columns: Bp[k*NR + j].
//
// What may vary from one processor to another is a runtime choice among compiled variants (GemmVariant:
// the tile height MR, the size of the row block kept in L2, the loop order); rnnfast/_core/tuning.py times
// them inside a layer's training step at first use. The panel width NR stays fixed per instruction set: packed weight layouts, the recurrences'
// thread split (Slice) and their scratch depend on it. None of the variants changes a single bit of a
// result: an element's sum runs over k in one order whatever the tile it falls in (see ku_for), K is cut
// into the same KC blocks, and the thread partition only moves whole elements. So results are identical
// for every variant and every thread count of the GEMMs.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <mutex>
#include <vector>

#include "aligned.h"
#include "simd.h"

namespace {

#ifndef RNNFAST_PF
#define RNNFAST_PF 32
#endif

template <typename T>
struct Tile {
    static constexpr int W = Simd<T>::W;
    static constexpr int NV = 2;             // vectors per panel row
    static constexpr int NR = NV * W;        // panel width in columns
    // MR: the default tile height (variant 0), and the one the bf16 products (gemm_bf16_body.h) keep: they
    // are not among the variants. MR_MAX: the tallest variant.
#if RNNFAST_VBYTES >= 64
    static constexpr int MR = 12;
    static constexpr int MR_MAX = 14;        // 28 accumulators + 2 panel vectors + 1 broadcast of 32 zmm
#else
    static constexpr int MR = 4;
    static constexpr int MR_MAX = 6;         // 12 accumulators + 2 + 1 of 16 ymm/xmm registers
#endif
};

// One way to run the GEMMs. mr: micro-tile height (2*mr accumulators); a_block: bytes of A that
// gemm_rows_panels keeps in L2 while the panels pass over them (and the packed A block of gemm_block);
// tiles_outer: gemm_rows_panels walks tiles outside panels (an A tile stays in L1 while the panels stream
// from L2) instead of panels outside tiles (a panel stays in L1 across the tiles of a block).
struct GemmVariant {
    const char* name;
    int mr;
    int a_block;
    bool tiles_outer;
};

// The compiled variants; the first is the default (RNNFAST_TUNE=0), the one rnnfast shipped before the
// tuner: 12x32 on AVX-512, 4-row tiles elsewhere.
#if RNNFAST_VBYTES >= 64
#define RNNFAST_NR_F "32"
#define RNNFAST_NR_D "16"
#define RNNFAST_VARIANTS(NR)                                                                                  \
    {"12x" NR, 12, 128 << 10, false}, {"8x" NR, 8, 128 << 10, false}, {"14x" NR, 14, 128 << 10, false},     \
    {"12x" NR "/big", 12, 512 << 10, false}, {"12x" NR "/tiles", 12, 128 << 10, true}
#else  // 16 vector registers (AVX2, SSE2/NEON): the same candidates, narrower panels
#if RNNFAST_VBYTES >= 32
#define RNNFAST_NR_F "16"
#define RNNFAST_NR_D "8"
#else
#define RNNFAST_NR_F "8"
#define RNNFAST_NR_D "4"
#endif
#define RNNFAST_VARIANTS(NR)                                                                                  \
    {"4x" NR, 4, 128 << 10, false}, {"6x" NR, 6, 128 << 10, false}, {"4x" NR "/big", 4, 512 << 10, false}, \
    {"6x" NR "/tiles", 6, 128 << 10, true}
#endif

template <typename T>
struct Variants;
template <>
struct Variants<float> {
    static constexpr GemmVariant list[] = {RNNFAST_VARIANTS(RNNFAST_NR_F)};
    static constexpr int count = sizeof(list) / sizeof(list[0]);
};
template <>
struct Variants<double> {
    static constexpr GemmVariant list[] = {RNNFAST_VARIANTS(RNNFAST_NR_D)};
    static constexpr int count = sizeof(list) / sizeof(list[0]);
};
#undef RNNFAST_VARIANTS
#undef RNNFAST_NR_F
#undef RNNFAST_NR_D

// The variants in force in this process: one for the time-parallel GEMMs, one (only its mr matters) for the
// per-step recurrent products. Set by the tuner; a kernel call reads them once. Any value gives the same
// results, so a change while another thread computes changes nothing but its speed.
template <typename T>
std::atomic<int>& chosen_variant(int which) {
    static std::atomic<int> gemm{0}, step{0};
    return which == 0 ? gemm : step;
}

// The variant a call asked for (index >= 0), or the one in force (index < 0; which: 0 GEMM, 1 step).
template <typename T>
const GemmVariant& variant_of(int index, int which) {
    if (index < 0 || index >= Variants<T>::count) index = chosen_variant<T>(which).load(std::memory_order_relaxed);
    return Variants<T>::list[index];
}

// Interleaved accumulator sets hide the FMA latency of a product with 1 or 2 rows (a batch-1 or 2 step).
// They change the order of each sum, so they are decided by the whole product's row count, never by the
// height of a tile: a row left over in a short last tile sums exactly as it would in a full one.
inline int ku_for(ptrdiff_t rows) { return rows == 1 ? 4 : rows == 2 ? 2 : 1; }

// One function of about 70 lines on purpose: its M_ x NV accumulators must stay in registers from the first k to
// the store, and a helper taking them by reference would make the compiler spill them (gemm_bf16_body.h's
// micro-kernel mirrors it for the same reason).
template <typename T, int M_, int KU, bool PF = true>
inline void ukernel_impl(ptrdiff_t K, const T* __restrict a, ptrdiff_t a_rs, ptrdiff_t a_ks,
                         const T* __restrict bp, T* __restrict c, ptrdiff_t ldc, int n, bool accumulate) {
    using V = typename Simd<T>::V;
    constexpr int W = Tile<T>::W, NV = Tile<T>::NV, NR = Tile<T>::NR;
    V acc[KU][M_][NV];
#pragma GCC unroll 64
    for (int u = 0; u < KU; ++u)
#pragma GCC unroll 64
        for (int i = 0; i < M_; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[u][i][v] = V{};
    ptrdiff_t k = 0;
    for (; k + KU <= K; k += KU) {
#pragma GCC unroll 64
        for (int u = 0; u < KU; ++u) {
            const T* bk = bp + (k + u) * NR;
            // Short products stream the panel from L2 with little reuse: fetch rows ahead into L1. Not where
            // the panels already sit in L1 (PF false): there the prefetches only take load slots (measured
            // here: LSTM H=64 B=1 on two threads, 32 KB a thread, 6% faster without; H=512, 8% slower).
            if (KU > 1 && PF && RNNFAST_PF > 0)
#pragma GCC unroll 4
                for (int v = 0; v < NR * static_cast<int>(sizeof(T)); v += 64)
                    __builtin_prefetch(reinterpret_cast<const char*>(bk + RNNFAST_PF * NR) + v);
            V b[NV];
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) b[v] = loadu<V>(bk + v * W);
#pragma GCC unroll 64
            for (int i = 0; i < M_; ++i) {
                const V ai = splat<V>(a[i * a_rs + (k + u) * a_ks]);
#pragma GCC unroll 4
                for (int v = 0; v < NV; ++v) acc[u][i][v] += ai * b[v];
            }
        }
    }
    for (; k < K; ++k) {
        const T* bk = bp + k * NR;
        V b[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) b[v] = loadu<V>(bk + v * W);
#pragma GCC unroll 64
        for (int i = 0; i < M_; ++i) {
            const V ai = splat<V>(a[i * a_rs + k * a_ks]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[0][i][v] += ai * b[v];
        }
    }
#pragma GCC unroll 64
    for (int u = 1; u < KU; ++u)
#pragma GCC unroll 64
        for (int i = 0; i < M_; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[0][i][v] += acc[u][i][v];
    if (n == NR) {
#pragma GCC unroll 64
        for (int i = 0; i < M_; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                T* cp = c + i * ldc + v * W;
                storeu(cp, accumulate ? loadu<V>(cp) + acc[0][i][v] : acc[0][i][v]);
            }
    } else {
        for (int i = 0; i < M_; ++i) {
            alignas(64) T tmp[NR];
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) storeu(tmp + v * W, acc[0][i][v]);
            T* cp = c + i * ldc;
            for (int j = 0; j < n; ++j) cp[j] = accumulate ? cp[j] + tmp[j] : tmp[j];
        }
    }
}

// m rows (1..MR_MAX) of A times one panel; ku = ku_for(rows of the whole product), so ku > 1 only where the
// product is that one tile. in_l1: the caller's panels fit in L1 (no prefetching; same results).
template <typename T>
inline void ukernel(int m, int ku, ptrdiff_t K, const T* a, ptrdiff_t a_rs, ptrdiff_t a_ks, const T* bp, T* c,
                    ptrdiff_t ldc, int n, bool accumulate, bool in_l1 = false) {
    if (ku == 4 && m == 1)
        return in_l1 ? ukernel_impl<T, 1, 4, false>(K, a, a_rs, a_ks, bp, c, ldc, n, accumulate)
                     : ukernel_impl<T, 1, 4>(K, a, a_rs, a_ks, bp, c, ldc, n, accumulate);
    if (ku == 2 && m == 2)
        return in_l1 ? ukernel_impl<T, 2, 2, false>(K, a, a_rs, a_ks, bp, c, ldc, n, accumulate)
                     : ukernel_impl<T, 2, 2>(K, a, a_rs, a_ks, bp, c, ldc, n, accumulate);
    switch (m) {
#define RNNFAST_UK(MM) \
    case MM: ukernel_impl<T, MM, 1>(K, a, a_rs, a_ks, bp, c, ldc, n, accumulate); return;
        RNNFAST_UK(1) RNNFAST_UK(2) RNNFAST_UK(3) RNNFAST_UK(4) RNNFAST_UK(5) RNNFAST_UK(6)
#if RNNFAST_VBYTES >= 64
        RNNFAST_UK(7) RNNFAST_UK(8) RNNFAST_UK(9) RNNFAST_UK(10) RNNFAST_UK(11) RNNFAST_UK(12)
        RNNFAST_UK(13) RNNFAST_UK(14)
#endif
#undef RNNFAST_UK
        default: return;
    }
}

// C[0:rows, 0:cols] (+)= A * Bp, A read in place (row i at a + i*a_rs), Bp consecutive panels of K*NR
// (a matrix packed once, e.g. a layer's W_ih^T). Rows go in blocks of about v.a_block bytes that stay in L2
// while every panel passes over them. ku: ku_for(the whole product's rows).
template <typename T>
inline void gemm_rows_panels(const GemmVariant& v, int ku, ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t K,
                             const T* a, ptrdiff_t a_rs, ptrdiff_t a_ks, const T* bp, T* c, ptrdiff_t ldc,
                             bool accumulate) {
    constexpr int NR = Tile<T>::NR;
    const int MR = v.mr;
    const ptrdiff_t MC =
        std::max<ptrdiff_t>(MR, (static_cast<ptrdiff_t>(v.a_block) / sizeof(T) / std::max<ptrdiff_t>(K, 1)) / MR * MR);
    auto tile = [&](ptrdiff_t i, ptrdiff_t j, ptrdiff_t i_end) {
        ukernel<T>(static_cast<int>(std::min<ptrdiff_t>(MR, i_end - i)), ku, K, a + i * a_rs, a_rs, a_ks,
                   bp + (j / NR) * K * NR, c + i * ldc + j, ldc, static_cast<int>(std::min<ptrdiff_t>(NR, cols - j)),
                   accumulate);
    };
    for (ptrdiff_t i0 = 0; i0 < rows; i0 += MC) {
        const ptrdiff_t i1 = std::min(rows, i0 + MC);
        if (v.tiles_outer) {
            for (ptrdiff_t i = i0; i < i1; i += MR)
                for (ptrdiff_t j = 0; j < cols; j += NR) tile(i, j, i1);
        } else {
            for (ptrdiff_t j = 0; j < cols; j += NR)
                for (ptrdiff_t i = i0; i < i1; i += MR) tile(i, j, i1);
        }
    }
}

// Packs columns [n0, n0+nc) and rows [k0, k0+kc) of B into panels of NR columns (zero-padded):
// out[(j/NR)*kc*NR + k*NR + j%NR] = B(k0+k, n0+j), where B(k, n) = b[k*b_ks + n*b_ns].
template <typename T>
inline void pack_panels(const T* b, ptrdiff_t b_ks, ptrdiff_t b_ns, ptrdiff_t k0, ptrdiff_t kc, ptrdiff_t n0,
                        ptrdiff_t nc, T* out) {
    constexpr int NR = Tile<T>::NR;
    for (ptrdiff_t j0 = 0; j0 < nc; j0 += NR) {
        T* dst = out + (j0 / NR) * kc * NR;
        const ptrdiff_t n = std::min<ptrdiff_t>(NR, nc - j0);
        if (b_ns == 1) {
            for (ptrdiff_t k = 0; k < kc; ++k) {
                const T* src = b + (k0 + k) * b_ks + n0 + j0;
                T* d = dst + k * NR;
                ptrdiff_t j = 0;
                for (; j < n; ++j) d[j] = src[j];
                for (; j < NR; ++j) d[j] = T(0);
            }
        } else {
            // Transposed source: walk each source row contiguously.
            for (ptrdiff_t j = 0; j < NR; ++j) {
                if (j < n) {
                    const T* src = b + (n0 + j0 + j) * b_ns + k0 * b_ks;
                    for (ptrdiff_t k = 0; k < kc; ++k) dst[k * NR + j] = src[k * b_ks];
                } else {
                    for (ptrdiff_t k = 0; k < kc; ++k) dst[k * NR + j] = T(0);
                }
            }
        }
    }
}

inline ptrdiff_t round_up(ptrdiff_t x, ptrdiff_t m) { return (x + m - 1) / m * m; }

// Packs rows [i0, i0+mc) and depth [k0, k0+kc) of A(i, k) = a[i*a_rs + k*a_ks] into MR-row blocks, k-major inside a
// block and zero-padded: out[blk*kc*MR + k*MR + r] = A(i0 + blk*MR + r, k0 + k). With a unit row stride (a
// transposed matrix) each k gives mc consecutive values, copied MR at a time; otherwise element by element.
template <typename T>
inline void pack_a_block(const T* a, ptrdiff_t a_rs, ptrdiff_t a_ks, ptrdiff_t i0, ptrdiff_t k0, ptrdiff_t mc,
                         ptrdiff_t kc, int MR, T* out) {
    for (ptrdiff_t k = 0; k < kc; ++k) {
        const T* src = a + i0 * a_rs + (k0 + k) * a_ks;
        for (ptrdiff_t r0 = 0; r0 < mc; r0 += MR) {
            T* d = out + (r0 / MR) * kc * MR + k * MR;
            const ptrdiff_t mr = std::min<ptrdiff_t>(MR, mc - r0);
            ptrdiff_t r = 0;
            if (a_rs == 1)
                for (; r < mr; ++r) d[r] = src[r0 + r];
            else
                for (; r < mr; ++r) d[r] = src[(r0 + r) * a_rs];
            for (; r < MR; ++r) d[r] = T(0);
        }
    }
}

// Packing buffers of one thread of gemm_block, sized before the threads start (nothing may throw inside a
// parallel region). KC is fixed: it decides where each sum is cut into partial sums added into C.
template <typename T>
struct GemmBuffers {
    static constexpr ptrdiff_t KC = 256, NC = 512;
    ptrdiff_t mc = 0;  // rows of the packed A block: about v.a_block bytes (at least 16 tiles), whole tiles
    AlignedVector<T> b, a;
    // Sizes the buffers for variant v; a buffer that served before keeps its memory (see GemmBufferPool).
    void fit(const GemmVariant& v) {
        mc = std::max<ptrdiff_t>(16, v.a_block / static_cast<ptrdiff_t>(sizeof(T) * KC) / v.mr) * v.mr;
        b.resize(static_cast<size_t>(KC * NC));
        a.resize(static_cast<size_t>(KC * mc));
    }
};

// The packing buffers of finished GEMM calls, for the next ones. Allocated afresh for every call, their pages
// fault in on first touch each time: on this project's VM a K=1 weight-gradient GEMM (256x1 by 1x64) took
// 0.6 ms instead of 0.02 ms, and an LSTM T=1000 B=1 H=64 training step 5 ms instead of 2. Shared by the calls
// of every Python thread (the lock is held only to take or give buffers); it keeps at most kKeep of them.
template <typename T>
class GemmBufferPool {
  public:
    // n buffers fitted to v (may throw: before the team starts).
    std::vector<GemmBuffers<T>> take(int n, const GemmVariant& v) {
        std::vector<GemmBuffers<T>> out;
        out.reserve(static_cast<size_t>(n));
        {
            std::lock_guard<std::mutex> lock(mutex_);
            while (static_cast<int>(out.size()) < n && !free_.empty()) {
                out.push_back(std::move(free_.back()));
                free_.pop_back();
            }
        }
        out.resize(static_cast<size_t>(n));
        for (GemmBuffers<T>& b : out) b.fit(v);
        return out;
    }
    void give(std::vector<GemmBuffers<T>>&& bufs) {
        std::lock_guard<std::mutex> lock(mutex_);
        for (GemmBuffers<T>& b : bufs)
            if (free_.size() < kKeep) free_.push_back(std::move(b));
    }

  private:
    static constexpr size_t kKeep = 8;
    std::mutex mutex_;
    std::vector<GemmBuffers<T>> free_;
};

template <typename T>
GemmBufferPool<T>& gemm_buffer_pool() {
    static GemmBufferPool<T> pool;
    return pool;
}

// One thread's share of C[m0:m1, n0:n1] (+)= A B with blocking for the caches.
// A(i,k) = a[i*a_rs + k*a_ks], B(k,j) = b[k*b_ks + j*b_ns]. C row-major with ldc. ku: ku_for(all rows of C).
template <typename T>
void gemm_block(const GemmVariant& v, int ku, ptrdiff_t m0, ptrdiff_t m1, ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t K,
                const T* a, ptrdiff_t a_rs, ptrdiff_t a_ks, const T* b, ptrdiff_t b_ks, ptrdiff_t b_ns, T* c,
                ptrdiff_t ldc, bool accumulate, GemmBuffers<T>& buf) {
    constexpr int NR = Tile<T>::NR;
    constexpr ptrdiff_t KC = GemmBuffers<T>::KC, NC = GemmBuffers<T>::NC;
    const int MR = v.mr;
    const ptrdiff_t MC = buf.mc;
    if (m1 <= m0 || n1 <= n0) return;
    // A row-major A (dx's dg) is read in place: the micro-kernel broadcasts one value at a time, and each of a
    // tile's rows is a contiguous stream. A transposed A (the weight gradients' dg^T: unit row stride, each k a
    // whole row of dg away) is packed where its k's lie far apart and enough panels share the packed block: read
    // in place, each k of a tile sits on another page once rows of dg are 4 KB, which no prefetcher follows;
    // packed, MR consecutive values are copied per k and tile, which costs about what the multiply-adds of 4
    // panels do. Measured on Zen 3 (AVX2, one thread, 6400 tokens, GFLOP/s in place -> packed): G*H x I =
    // 2048x256 69 -> 83, 2048x512 68 -> 82, 1024x128 65 -> 71, 512x512 72 -> 79, but 2048x64 66 -> 59, 512x128
    // 73 -> 63, 256x64 77 -> 56; hence at least 8 panels and 32 KB of k-stride over them. An element-by-element
    // gather (any other strides: a view of a view) cost as much as the multiply-adds it fed at H=64, so it is
    // left to the rare layouts that need it. The sums are the same either way.
    const ptrdiff_t panels = (n1 - n0 + NR - 1) / NR;
    const bool in_place = a_ks == 1 || (a_rs == 1 && (panels < 8 || panels * a_ks * static_cast<ptrdiff_t>(sizeof(T))
                                                                         < (32 << 10)));
    AlignedVector<T>& bbuf = buf.b;
    AlignedVector<T>& abuf = buf.a;
    if (K == 0) {
        if (!accumulate)
            for (ptrdiff_t i = m0; i < m1; ++i) std::fill(c + i * ldc + n0, c + i * ldc + n1, T(0));
        return;
    }
    for (ptrdiff_t jc = n0; jc < n1; jc += NC) {
        const ptrdiff_t nc = std::min(NC, n1 - jc);
        for (ptrdiff_t pc = 0; pc < K; pc += KC) {
            const ptrdiff_t kc = std::min(KC, K - pc);
            const bool acc = accumulate || pc > 0;
            pack_panels<T>(b, b_ks, b_ns, pc, kc, jc, nc, bbuf.data());
            for (ptrdiff_t ic = m0; ic < m1; ic += MC) {
                const ptrdiff_t mc = std::min(MC, m1 - ic);
                if (!in_place) pack_a_block<T>(a, a_rs, a_ks, ic, pc, mc, kc, MR, abuf.data());
                for (ptrdiff_t j = 0; j < nc; j += NR) {
                    const T* panel = bbuf.data() + (j / NR) * kc * NR;
                    const int n = static_cast<int>(std::min<ptrdiff_t>(NR, nc - j));
                    for (ptrdiff_t i0 = 0; i0 < mc; i0 += MR) {
                        const int mr = static_cast<int>(std::min<ptrdiff_t>(MR, mc - i0));
                        T* cij = c + (ic + i0) * ldc + jc + j;
                        if (in_place)
                            ukernel<T>(mr, ku, kc, a + (ic + i0) * a_rs + pc * a_ks, a_rs, a_ks, panel, cij, ldc, n,
                                       acc);
                        else
                            ukernel<T>(mr, ku, kc, abuf.data() + (i0 / MR) * kc * MR, 1, MR, panel, cij, ldc, n, acc);
                    }
                }
            }
        }
    }
}

}  // namespace
