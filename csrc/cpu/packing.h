// packing.h: the layouts of the recurrent weights the CPU recurrences read.
//
// A recurrent weight w is (G*size, K): G gates of `size` rows (hidden units, or a projection's features),
// K the state it multiplies (H, or proj_size). The forward layout cuts rows into panels of NR units, gate by
// gate, so that a thread's units of every gate are contiguous; the backward layout cuts the columns.
#pragma once

#include <algorithm>

#include "gemm.h"

namespace {

template <typename T>
inline ptrdiff_t packed_size_forward(int G, int H, int K) {
    return round_up(H, Tile<T>::NR) * static_cast<ptrdiff_t>(G) * K;
}
template <typename T>
inline ptrdiff_t packed_size_backward(int G, int H, int K) {
    return round_up(K, Tile<T>::NR) * static_cast<ptrdiff_t>(G) * H;
}

// wf[(ub*G + g)*K*NR + k*NR + j] = w[g*H + ub*NR + j, k]
template <typename T>
void pack_forward(const T* w, int G, int H, int K, T* wf) {
    constexpr int NR = Tile<T>::NR;
    const int nub = static_cast<int>(round_up(H, NR) / NR);
    for (int ub = 0; ub < nub; ++ub)
        for (int g = 0; g < G; ++g) {
            const int n = std::min(NR, H - ub * NR);
            // B(k, j) = w[(g*H + ub*NR + j)*K + k]: k stride 1, j stride K.
            pack_panels<T>(w + static_cast<ptrdiff_t>(g * H + ub * NR) * K, 1, K, 0, K, 0, n,
                           wf + static_cast<ptrdiff_t>(ub * G + g) * K * NR);
        }
}

// wb[kb*G*H*NR + r*NR + j] = w[r, kb*NR + j]
template <typename T>
void pack_backward(const T* w, int G, int H, int K, T* wb) {
    constexpr int NR = Tile<T>::NR;
    const int nkb = static_cast<int>(round_up(K, NR) / NR);
    const ptrdiff_t GH = static_cast<ptrdiff_t>(G) * H;
    for (int kb = 0; kb < nkb; ++kb)
        pack_panels<T>(w, K, 1, 0, GH, kb * NR, std::min(NR, K - kb * NR), wb + kb * GH * NR);
}

}  // namespace
