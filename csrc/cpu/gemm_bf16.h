// gemm_bf16.h: the per-step recurrent product of the bfloat16 inference mode: W_hh stored as bf16, the state
// rounded to bf16 once per step, float32 accumulation (AVX512_BF16's vdpbf16ps, or its exact emulation).
//
// Layout: a bf16 pair holds two consecutive k of one column in a 32-bit word, k even in the low half, as
// vdpbf16ps reads them. W_hh is packed as pack_forward packs it (panels of NR units, gate by gate, so that
// Slice's split is unchanged), with K/2 rounded up rows of pairs (an odd K pads with a zero weight):
//     wp[(ub*G + g)*Kp*NR + p*NR + j] = bf16(w[g*H + ub*NR + j, 2p]) | bf16(w[.., 2p + 1]) << 16
// and the state row b as hb[b*Kp + p] = bf16(h[b, 2p]) | bf16(h[b, 2p + 1]) << 16.
//
// vdpbf16ps computes, per lane, acc = fma(a_odd, b_odd, acc) then acc = fma(a_even, b_even, acc) (Intel's
// definition; measured identical on AMD Zen 5, 3.2e7 lanes), and a product of two bf16 values is exact in
// float32, so a multiply then an add gives the same sums. The emulation (every build, and the AVX-512 one on
// a processor without AVX512_BF16) does exactly that in the same order, and rounds as vcvtne2ps2bf16 does:
// results are bit-identical to the instruction's. (Both flush denormal inputs to zero; the instruction also
// flushes a sum that falls below 2^-126, the emulation does not: only such tiny partial sums can differ.)
//
// The native code is compiled for avx512bf16 by a target pragma around its own namespace and only called
// after bf16_runs_natively() checked the processor: nothing else in the library may use those instructions.
// Its functions are placed in a section of their own, rnnfast_bf16_native, so that a test can check in the
// built library (stripped or not) that every bf16 instruction is in there.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "gemm.h"

#if RNNFAST_VBYTES >= 64 && (defined(__x86_64__) || defined(__i386__))
#define RNNFAST_BF16_NATIVE 1
#include <immintrin.h>
#else
#define RNNFAST_BF16_NATIVE 0
#endif

namespace {

// float -> bf16 bits as vcvtne2ps2bf16: nearest even, a denormal to a signed zero, a NaN quietened.
inline uint16_t bf16_bits(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    const uint32_t exponent = (u >> 23) & 0xff;
    if (exponent == 0) return static_cast<uint16_t>((u >> 16) & 0x8000);
    if (exponent == 0xff) return static_cast<uint16_t>((u >> 16) | ((u & 0x7fffff) ? 0x40 : 0));
    return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

inline uint32_t bf16_pair(float even, float odd) {
    return static_cast<uint32_t>(bf16_bits(even)) | static_cast<uint32_t>(bf16_bits(odd)) << 16;
}

inline ptrdiff_t bf16_pairs(ptrdiff_t K) { return (K + 1) / 2; }

inline ptrdiff_t packed_size_forward_bf16(int G, int H, int K) {
    return round_up(H, Tile<float>::NR) * static_cast<ptrdiff_t>(G) * bf16_pairs(K);
}

inline void pack_forward_bf16(const float* w, int G, int H, int K, uint32_t* wp) {
    constexpr int NR = Tile<float>::NR;
    const ptrdiff_t Kp = bf16_pairs(K);
    const int nub = static_cast<int>(round_up(H, NR) / NR);
    for (int ub = 0; ub < nub; ++ub)
        for (int g = 0; g < G; ++g) {
            uint32_t* panel = wp + (static_cast<ptrdiff_t>(ub) * G + g) * Kp * NR;
            for (int j = 0; j < NR; ++j) {
                const int u = ub * NR + j;
                const float* row = w + static_cast<ptrdiff_t>(g * H + u) * K;
                for (ptrdiff_t p = 0; p < Kp; ++p)
                    panel[p * NR + j] = u >= H ? 0u : bf16_pair(row[2 * p], 2 * p + 1 < K ? row[2 * p + 1] : 0.0f);
            }
        }
}

inline void round_bf16(const float* x, ptrdiff_t n, uint16_t* out) {
    for (ptrdiff_t i = 0; i < n; ++i) out[i] = bf16_bits(x[i]);
}

// The exact emulation: a pair is split into two float32 values (bf16 is float32's upper half).
namespace bf16_emulated {
using V = Simd<float>::V;
using I = Simd<float>::I;
struct Pair { V lo, hi; };
inline Pair pair(uint32_t a) {
    float lo, hi;
    const uint32_t ulo = a << 16, uhi = a & 0xffff0000u;
    std::memcpy(&lo, &ulo, 4);
    std::memcpy(&hi, &uhi, 4);
    return {splat<V>(lo), splat<V>(hi)};
}
// The odd k first, as the instruction (the products are exact: fused or not, the sums are the same).
inline V dp(V acc, const Pair& a, V b) {
    const I bi = (I)b;
    acc = acc + a.hi * (V)(bi & static_cast<int32_t>(0xffff0000u));
    return acc + a.lo * (V)(bi << 16);
}
inline void convert_rows(const float* src, ptrdiff_t ld, int rows, int K, uint32_t* dst, ptrdiff_t ldd) {
    const ptrdiff_t Kp = bf16_pairs(K);
    for (int b = 0; b < rows; ++b) {
        const float* s = src + b * ld;
        uint32_t* d = dst + b * ldd;
        for (ptrdiff_t p = 0; p < K / 2; ++p) d[p] = bf16_pair(s[2 * p], s[2 * p + 1]);
        if (Kp > K / 2) d[K / 2] = bf16_pair(s[K - 1], 0.0f);
    }
}
#define RNNFAST_BF16_FN
#include "gemm_bf16_body.h"
#undef RNNFAST_BF16_FN
}  // namespace bf16_emulated

#if RNNFAST_BF16_NATIVE
#pragma GCC push_options
#pragma GCC target("avx512bf16")
namespace bf16_native {
#define RNNFAST_BF16_FN __attribute__((section("rnnfast_bf16_native"), noclone))  // a clone would lose the section
using V = Simd<float>::V;
using Pair = __m512i;
RNNFAST_BF16_FN inline Pair pair(uint32_t a) { return _mm512_set1_epi32(static_cast<int>(a)); }
RNNFAST_BF16_FN inline V dp(V acc, const Pair& a, V b) {
    return (V)_mm512_dpbf16_ps((__m512)acc, (__m512bh)a, (__m512bh)b);
}
// 32 values a go: vcvtne2ps2bf16 puts the second source in the upper half, so pairs come out in k order.
RNNFAST_BF16_FN inline void convert_rows(const float* src, ptrdiff_t ld, int rows, int K, uint32_t* dst,
                                         ptrdiff_t ldd) {
    for (int b = 0; b < rows; ++b) {
        const float* s = src + b * ld;
        uint32_t* d = dst + b * ldd;
        for (int k = 0; k < K; k += 32) {
            const int left = K - k;
            const __mmask16 m_lo = left >= 16 ? 0xffff : static_cast<__mmask16>((1u << left) - 1);
            const __mmask16 m_hi = left >= 32 ? 0xffff : left <= 16 ? 0 : static_cast<__mmask16>((1u << (left - 16)) - 1);
            const __m512 lo = _mm512_maskz_loadu_ps(m_lo, s + k), hi = _mm512_maskz_loadu_ps(m_hi, s + k + 16);
            const int pairs = left >= 32 ? 16 : (left + 1) / 2;
            const __mmask16 m_out = pairs >= 16 ? 0xffff : static_cast<__mmask16>((1u << pairs) - 1);
            _mm512_mask_storeu_epi32(d + k / 2, m_out, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
    }
}
#include "gemm_bf16_body.h"
#undef RNNFAST_BF16_FN
}  // namespace bf16_native
#pragma GCC pop_options
#endif

// Whether this processor runs AVX512_BF16 (checked once). RNNFAST_BF16=emulate asks for the emulation
// (tests compare the two).
inline bool bf16_runs_natively() {
#if RNNFAST_BF16_NATIVE
    static const bool yes = [] {
        const char* want = std::getenv("RNNFAST_BF16");
        if (want && !std::strcmp(want, "emulate")) return false;
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512bf16") != 0;
    }();
    return yes;
#else
    return false;
#endif
}

// hb[b][:] = src[b][0:K] rounded to bf16 pairs (Kp words a row) for b < rows.
inline void convert_rows_bf16(const float* src, ptrdiff_t ld, int rows, int K, uint32_t* hb) {
#if RNNFAST_BF16_NATIVE
    if (bf16_runs_natively()) return bf16_native::convert_rows(src, ld, rows, K, hb, bf16_pairs(K));
#endif
    bf16_emulated::convert_rows(src, ld, rows, K, hb, bf16_pairs(K));
}

// acc[b][(g - g0)*width + (ub - b0)*NR + j] = hb[b][:] . W[g*H + ub*NR + j][:] for gates [g0, g1), unit
// blocks [b0, b1) and rows b < Bt; wp packed by pack_forward_bf16 with G gates and Kp pairs.
inline void forward_product_bf16(const uint32_t* wp, int G, ptrdiff_t Kp, int b0, int b1, int width, int g0, int g1,
                                 const uint32_t* hb, int Bt, float* acc, ptrdiff_t ldc) {
#if RNNFAST_BF16_NATIVE
    if (bf16_runs_natively()) return bf16_native::product(wp, G, Kp, b0, b1, width, g0, g1, hb, Bt, acc, ldc);
#endif
    bf16_emulated::product(wp, G, Kp, b0, b1, width, g0, g1, hb, Bt, acc, ldc);
}

}  // namespace
