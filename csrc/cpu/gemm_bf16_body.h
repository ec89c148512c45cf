// gemm_bf16_body.h: the bf16 micro-kernel and product loop, written once and included by gemm_bf16.h into
// each of its namespaces (bf16_emulated; bf16_native under the avx512bf16 target), which define before it
// V, Pair, pair(word) (a state pair broadcast) and dp(acc, pair, b) (vdpbf16ps or its emulation), and
// RNNFAST_BF16_FN, the attributes of every function here (the native ones go to a section of their own).
// No include guard: it is meant to be included once per namespace.
//
// The structure is gemm.h's ukernel's with K pairs in place of K values: the same tile heights and the same
// KU interleaved accumulator sets, so the summation order of an element depends only on K and on the tile
// height, and is the same for the native and the emulated kernel.

// One function, though 61 lines (a third of them unroll pragmas): its KU * M_ * NV accumulators stay in registers
// from the first multiply-add to the store, and pieces would have to be forced inline into one body again; it
// follows gemm.h's ukernel_impl line for line, so the two read side by side.
template <int M_, int KU>
inline __attribute__((always_inline)) void ukernel_impl(ptrdiff_t Kp, const uint32_t* __restrict a, ptrdiff_t a_rs,
                                                        const uint32_t* __restrict bp, float* __restrict c,
                                                        ptrdiff_t ldc, int n) {
    constexpr int W = Tile<float>::W, NV = Tile<float>::NV, NR = Tile<float>::NR;
    V acc[KU][M_][NV];
#pragma GCC unroll 64
    for (int u = 0; u < KU; ++u)
#pragma GCC unroll 64
        for (int i = 0; i < M_; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[u][i][v] = V{};
    ptrdiff_t p = 0;
    for (; p + KU <= Kp; p += KU) {
#pragma GCC unroll 64
        for (int u = 0; u < KU; ++u) {
            const uint32_t* bk = bp + (p + u) * NR;
            if (M_ <= 2)
#pragma GCC unroll 4
                for (int v = 0; v < NR * 4; v += 64)
                    __builtin_prefetch(reinterpret_cast<const char*>(bk + RNNFAST_PF * NR) + v);
            V b[NV];
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) b[v] = loadu<V>(bk + v * W);
#pragma GCC unroll 64
            for (int i = 0; i < M_; ++i) {
                const Pair ai = pair(a[i * a_rs + p + u]);
#pragma GCC unroll 4
                for (int v = 0; v < NV; ++v) acc[u][i][v] = dp(acc[u][i][v], ai, b[v]);
            }
        }
    }
    for (; p < Kp; ++p) {
        const uint32_t* bk = bp + p * NR;
        V b[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) b[v] = loadu<V>(bk + v * W);
#pragma GCC unroll 64
        for (int i = 0; i < M_; ++i) {
            const Pair ai = pair(a[i * a_rs + p]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[0][i][v] = dp(acc[0][i][v], ai, b[v]);
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
            for (int v = 0; v < NV; ++v) storeu(c + i * ldc + v * W, acc[0][i][v]);
    } else {
        for (int i = 0; i < M_; ++i) {
            alignas(64) float tmp[NR];
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) storeu(tmp + v * W, acc[0][i][v]);
            for (int j = 0; j < n; ++j) c[i * ldc + j] = tmp[j];
        }
    }
}

// One function per tile height, not a template: GCC ignores a section attribute on template instantiations,
// so the templates above are inlined into these.
#define RNNFAST_UK(MM)                                                                                          \
    RNNFAST_BF16_FN void ukernel_##MM(ptrdiff_t Kp, const uint32_t* a, ptrdiff_t a_rs, const uint32_t* bp,    \
                                      float* c, ptrdiff_t ldc, int n) {                                       \
        ukernel_impl<MM, MM == 1 ? 4 : (MM == 2 ? 2 : 1)>(Kp, a, a_rs, bp, c, ldc, n);                        \
    }
RNNFAST_UK(1) RNNFAST_UK(2) RNNFAST_UK(3) RNNFAST_UK(4)
#if RNNFAST_VBYTES >= 64
RNNFAST_UK(5) RNNFAST_UK(6) RNNFAST_UK(7) RNNFAST_UK(8) RNNFAST_UK(9) RNNFAST_UK(10) RNNFAST_UK(11) RNNFAST_UK(12)
#endif
#undef RNNFAST_UK

// m rows (1..MR) of the state pairs times one panel: c[i][0:n] = a[i] . panel.
RNNFAST_BF16_FN inline void ukernel(int m, ptrdiff_t Kp, const uint32_t* a, ptrdiff_t a_rs, const uint32_t* bp,
                                    float* c, ptrdiff_t ldc, int n) {
    switch (m) {
#define RNNFAST_UK(MM) \
    case MM: ukernel_##MM(Kp, a, a_rs, bp, c, ldc, n); return;
        RNNFAST_UK(1) RNNFAST_UK(2) RNNFAST_UK(3) RNNFAST_UK(4)
#if RNNFAST_VBYTES >= 64
        RNNFAST_UK(5) RNNFAST_UK(6) RNNFAST_UK(7) RNNFAST_UK(8)
        RNNFAST_UK(9) RNNFAST_UK(10) RNNFAST_UK(11) RNNFAST_UK(12)
#endif
#undef RNNFAST_UK
        default: return;
    }
}

// See forward_product_bf16 (gemm_bf16.h). The state rows hb are Kp words apart.
RNNFAST_BF16_FN inline void product(const uint32_t* wp, int G, ptrdiff_t Kp, int b0, int b1, int width, int g0, int g1,
                    const uint32_t* hb, int Bt, float* acc, ptrdiff_t ldc) {
    constexpr int NR = Tile<float>::NR, MR = Tile<float>::MR;
    for (int ub = b0; ub < b1; ++ub)
        for (int g = g0; g < g1; ++g) {
            const uint32_t* panel = wp + (static_cast<ptrdiff_t>(ub) * G + g) * Kp * NR;
            float* c = acc + (g - g0) * width + (ub - b0) * NR;
            for (int b = 0; b < Bt; b += MR)
                ukernel(std::min(MR, Bt - b), Kp, hb + b * Kp, Kp, panel, c + b * ldc, ldc, NR);
        }
}
