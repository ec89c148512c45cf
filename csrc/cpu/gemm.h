// gemm.h: the register-blocked GEMM micro-kernel, weight-panel packing, and a blocked, threaded GEMM.
//
// One micro-kernel serves both the per-step recurrent products inside the recurrence kernels and the
// large time-parallel GEMMs (input projection, dx, dW). It computes an m x n tile (m <= MR, n <= NR) of
//     C (+)= A * Bp
// where A is read through two strides (A[i][k] = a[i*a_rs + k*a_ks], so a row-major matrix, its transpose,
// or a packed MR-row block all work) and Bp is a packed panel of NR columns: Bp[k*NR + j].
// The summation order of an element depends only on K and on the tile height m, never on the thread
// partition, so results are identical for every thread count.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

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
#if RNNFAST_VBYTES >= 64
    static constexpr int MR = 12;            // 24 accumulators of 32 zmm registers
#else
    static constexpr int MR = 4;             // 8 accumulators of 16 ymm/xmm registers
#endif
};

// KU interleaved accumulator sets hide the FMA latency when the tile is short (batch 1 or 2).
template <typename T, int M_, int KU>
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
            // Short tiles stream the panel from L2 with little reuse: fetch rows ahead into L1.
            if (M_ <= 2)
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

template <typename T, int M_>
inline void ukernel_m(ptrdiff_t K, const T* a, ptrdiff_t a_rs, ptrdiff_t a_ks, const T* bp, T* c,
                      ptrdiff_t ldc, int n, bool accumulate) {
    constexpr int KU = M_ == 1 ? 4 : (M_ == 2 ? 2 : 1);
    ukernel_impl<T, M_, KU>(K, a, a_rs, a_ks, bp, c, ldc, n, accumulate);
}

// m rows (1..MR) of A times one panel.
template <typename T>
inline void ukernel(int m, ptrdiff_t K, const T* a, ptrdiff_t a_rs, ptrdiff_t a_ks, const T* bp, T* c,
                    ptrdiff_t ldc, int n, bool accumulate) {
    switch (m) {
#define RNNFAST_UK(MM) \
    case MM: ukernel_m<T, MM>(K, a, a_rs, a_ks, bp, c, ldc, n, accumulate); return;
        RNNFAST_UK(1) RNNFAST_UK(2) RNNFAST_UK(3) RNNFAST_UK(4)
#if RNNFAST_VBYTES >= 64
        RNNFAST_UK(5) RNNFAST_UK(6) RNNFAST_UK(7) RNNFAST_UK(8)
        RNNFAST_UK(9) RNNFAST_UK(10) RNNFAST_UK(11) RNNFAST_UK(12)
#endif
#undef RNNFAST_UK
        default: return;
    }
}

// C[0:rows, 0:cols] (+)= A * Bp, A read in place (row i at a + i*a_rs), Bp consecutive panels of K*NR
// (a matrix packed once, e.g. a layer's W_ih^T). Rows go in blocks that stay in L2 while every panel
// passes over them; a panel stays in L1 across the tiles of a block.
template <typename T>
inline void gemm_rows_panels(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t K, const T* a, ptrdiff_t a_rs,
                             ptrdiff_t a_ks, const T* bp, T* c, ptrdiff_t ldc, bool accumulate) {
    constexpr int NR = Tile<T>::NR, MR = Tile<T>::MR;
    const ptrdiff_t MC = std::max<ptrdiff_t>(MR, (128 * 1024 / sizeof(T) / std::max<ptrdiff_t>(K, 1)) / MR * MR);
    for (ptrdiff_t i0 = 0; i0 < rows; i0 += MC) {
        const ptrdiff_t mc = std::min(MC, rows - i0);
        for (ptrdiff_t j = 0; j < cols; j += NR) {
            const T* panel = bp + (j / NR) * K * NR;
            const int n = static_cast<int>(std::min<ptrdiff_t>(NR, cols - j));
            for (ptrdiff_t i = i0; i < i0 + mc; i += MR)
                ukernel<T>(static_cast<int>(std::min<ptrdiff_t>(MR, i0 + mc - i)), K, a + i * a_rs, a_rs, a_ks,
                           panel, c + i * ldc + j, ldc, n, accumulate);
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

// One thread's share of C[m0:m1, n0:n1] (+)= A B with blocking for the caches.
// A(i,k) = a[i*a_rs + k*a_ks], B(k,j) = b[k*b_ks + j*b_ns]. C row-major with ldc.
// Packing buffers of one thread of gemm_block, allocated before the threads start (nothing may throw inside
// a parallel region).
template <typename T>
struct GemmBuffers {
    static constexpr ptrdiff_t KC = 256, NC = 512, MC = Tile<T>::MR * 16;
    std::vector<T> b = std::vector<T>(static_cast<size_t>(KC * NC));
    std::vector<T> a = std::vector<T>(static_cast<size_t>(KC * MC));
};

template <typename T>
void gemm_block(ptrdiff_t m0, ptrdiff_t m1, ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t K, const T* a, ptrdiff_t a_rs,
                ptrdiff_t a_ks, const T* b, ptrdiff_t b_ks, ptrdiff_t b_ns, T* c, ptrdiff_t ldc, bool accumulate,
                GemmBuffers<T>& buf) {
    constexpr int NR = Tile<T>::NR, MR = Tile<T>::MR;
    constexpr ptrdiff_t KC = GemmBuffers<T>::KC, NC = GemmBuffers<T>::NC, MC = GemmBuffers<T>::MC;
    if (m1 <= m0 || n1 <= n0) return;
    std::vector<T>& bbuf = buf.b;
    std::vector<T>& abuf = buf.a;
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
                // Pack A into MR-row blocks, k-major inside a block: abuf[blk*kc*MR + k*MR + r].
                for (ptrdiff_t i0 = 0; i0 < mc; i0 += MR) {
                    T* dst = abuf.data() + (i0 / MR) * kc * MR;
                    const ptrdiff_t mr = std::min<ptrdiff_t>(MR, mc - i0);
                    for (ptrdiff_t k = 0; k < kc; ++k)
                        for (ptrdiff_t r = 0; r < MR; ++r)
                            dst[k * MR + r] = r < mr ? a[(ic + i0 + r) * a_rs + (pc + k) * a_ks] : T(0);
                }
                for (ptrdiff_t j = 0; j < nc; j += NR) {
                    const T* panel = bbuf.data() + (j / NR) * kc * NR;
                    const int n = static_cast<int>(std::min<ptrdiff_t>(NR, nc - j));
                    for (ptrdiff_t i0 = 0; i0 < mc; i0 += MR) {
                        const int mr = static_cast<int>(std::min<ptrdiff_t>(MR, mc - i0));
                        ukernel<T>(mr, kc, abuf.data() + (i0 / MR) * kc * MR, 1, MR, panel,
                                   c + (ic + i0) * ldc + jc + j, ldc, n, acc);
                    }
                }
            }
        }
    }
}

}  // namespace
