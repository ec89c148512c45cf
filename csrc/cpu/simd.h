// simd.h: the vector type and the vector math of one instruction set.
//
// Included only by kernels_isa.h, inside an ISA translation unit that defines RNNFAST_VBYTES (64 for
// AVX-512, 32 for AVX2, 16 for the portable SSE2/NEON build) and is compiled with the matching -m flags.
// GCC/Clang vector extensions keep one source for every width. Everything here has internal linkage, so
// the three builds of the same inline code never meet at link time (no ODR mixing of instruction sets).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#ifndef RNNFAST_VBYTES
#error "RNNFAST_VBYTES must be defined by the ISA translation unit"
#endif

namespace {

template <typename T> struct Simd;

template <> struct Simd<float> {
    static constexpr int W = RNNFAST_VBYTES / 4;
    typedef float V __attribute__((vector_size(RNNFAST_VBYTES)));
    typedef int32_t I __attribute__((vector_size(RNNFAST_VBYTES)));
    typedef int32_t IntS;
    static constexpr int kMant = 23, kBias = 127;
    static constexpr double kLo = -87.0, kHi = 88.0;  // exp(x) stays a normal float
};

template <> struct Simd<double> {
    static constexpr int W = RNNFAST_VBYTES / 8;
    typedef double V __attribute__((vector_size(RNNFAST_VBYTES)));
    typedef int64_t I __attribute__((vector_size(RNNFAST_VBYTES)));
    typedef int64_t IntS;
    static constexpr int kMant = 52, kBias = 1023;
    static constexpr double kLo = -708.0, kHi = 709.0;
};

template <typename V, typename T>
inline V splat(T s) { return s - V{}; }

template <typename V, typename T>
inline V loadu(const T* p) { V v; std::memcpy(&v, p, sizeof v); return v; }

template <typename V, typename T>
inline void storeu(T* p, V v) { std::memcpy(p, &v, sizeof v); }

// Math policy for cells.h, over SIMD vectors of T and over scalar T (the tail of a row).
// exp, sigmoid and tanh share one range reduction: x = n*ln2 + r, |r| <= ln2/2, exp(x) = 2^n (1 + p(r))
// where p = expm1 on the reduced range (Taylor polynomial, error below half an ulp of the result).
// tanh uses expm1 so that it keeps full relative accuracy near zero.
//
// The pointwise walk of a step costs as much as its product at small H (LSTM H=64 B=64: 9 against 14 thousand
// TSC cycles a step, Zen 5), and it is bound by the number of vector instructions, not by the divisions
// (a division costs ~1.2 TSC cycles of a 60-cycle LSTM cell, measured). So the code below counts instructions:
// clamps are one max/min each, |x| and the sign are bit operations, and with AVX-512 vscalef multiplies by
// 2^n in one instruction where the portable code builds 2^n's bits (convert, add, shift) and multiplies.
template <typename T>
struct VecMath {
    using S = Simd<T>;
    using V = typename S::V;
    using I = typename S::I;

    static V c(double v) { return splat<V>(static_cast<T>(v)); }

    // max(lo, x) and min(hi, x) in one instruction each where x86 has it; x86's max/min return their second
    // operand where either is NaN, so a NaN x passes through, as with the portable form (a compare and a
    // blend, which is what GCC makes of lo > x ? lo : x: two instructions).
    static V max_nan_passes(V lo, V x) {
#if RNNFAST_VBYTES == 64 && defined(__AVX512F__)
        if constexpr (std::is_same<T, float>::value) return (V)_mm512_max_ps((__m512)lo, (__m512)x);
        else return (V)_mm512_max_pd((__m512d)lo, (__m512d)x);
#elif RNNFAST_VBYTES == 32 && defined(__AVX__)
        if constexpr (std::is_same<T, float>::value) return (V)_mm256_max_ps((__m256)lo, (__m256)x);
        else return (V)_mm256_max_pd((__m256d)lo, (__m256d)x);
#elif RNNFAST_VBYTES == 16 && defined(__SSE2__)
        if constexpr (std::is_same<T, float>::value) return (V)_mm_max_ps((__m128)lo, (__m128)x);
        else return (V)_mm_max_pd((__m128d)lo, (__m128d)x);
#else
        return lo > x ? lo : x;
#endif
    }
    static V min_nan_passes(V hi, V x) {
#if RNNFAST_VBYTES == 64 && defined(__AVX512F__)
        if constexpr (std::is_same<T, float>::value) return (V)_mm512_min_ps((__m512)hi, (__m512)x);
        else return (V)_mm512_min_pd((__m512d)hi, (__m512d)x);
#elif RNNFAST_VBYTES == 32 && defined(__AVX__)
        if constexpr (std::is_same<T, float>::value) return (V)_mm256_min_ps((__m256)hi, (__m256)x);
        else return (V)_mm256_min_pd((__m256d)hi, (__m256d)x);
#elif RNNFAST_VBYTES == 16 && defined(__SSE2__)
        if constexpr (std::is_same<T, float>::value) return (V)_mm_min_ps((__m128)hi, (__m128)x);
        else return (V)_mm_min_pd((__m128d)hi, (__m128d)x);
#else
        return hi < x ? hi : x;
#endif
    }
    static V clamp(V x, double lo, double hi) { return min_nan_passes(c(hi), max_nan_passes(c(lo), x)); }
    static V sign_bit() { return c(-0.0); }
    static V abs(V x) { return (V)((I)x & ~(I)sign_bit()); }
    static V copysign(V mag, V sgn) {  // one vpternlog on AVX-512
        const I s = (I)sign_bit();
        return (V)(((I)mag & ~s) | ((I)sgn & s));
    }

    // v * 2^n for integral n with 2^n a normal number.
    static V scale(V v, V n) {
#if RNNFAST_VBYTES == 64 && defined(__AVX512F__)
        if constexpr (std::is_same<T, float>::value) return (V)_mm512_scalef_ps((__m512)v, (__m512)n);
        else return (V)_mm512_scalef_pd((__m512d)v, (__m512d)n);
#else
        I ni = __builtin_convertvector(n, I);
        I bits = (ni + static_cast<typename S::IntS>(S::kBias)) << S::kMant;
        return v * (V)bits;  // same-size vector cast: reinterprets the bits
#endif
    }

    // t(r) = 1 + r/2! + r^2/3! + ... (Horner), so that expm1(r) = r t(r) and exp(r) = r t(r) + 1.
    static V taylor_tail(V r) {
        if constexpr (std::is_same<T, float>::value) {
            V p = c(1.0 / 5040);
            p = p * r + c(1.0 / 720);
            p = p * r + c(1.0 / 120);
            p = p * r + c(1.0 / 24);
            p = p * r + c(1.0 / 6);
            p = p * r + c(0.5);
            return p * r + c(1.0);
        } else {
            V p = c(1.0 / 6227020800.0);  // 1/13!
            p = p * r + c(1.0 / 479001600.0);
            p = p * r + c(1.0 / 39916800.0);
            p = p * r + c(1.0 / 3628800.0);
            p = p * r + c(1.0 / 362880.0);
            p = p * r + c(1.0 / 40320.0);
            p = p * r + c(1.0 / 5040.0);
            p = p * r + c(1.0 / 720.0);
            p = p * r + c(1.0 / 120.0);
            p = p * r + c(1.0 / 24.0);
            p = p * r + c(1.0 / 6.0);
            p = p * r + c(0.5);
            return p * r + c(1.0);
        }
    }
    static V expm1_poly(V r) { return taylor_tail(r) * r; }          // expm1(r) for |r| <= ln2/2
    static V exp_poly(V r) { return taylor_tail(r) * r + c(1.0); }   // exp(r): the + 1 rides the last FMA

    // x = n ln2 + r with n integral, |r| <= ln2/2 (x clamped so that 2^n stays a normal number).
    static V reduce(V x, V& n) {
        x = clamp(x, S::kLo, S::kHi);
        // Round to nearest with the 1.5*2^mant trick (exact for |x*log2e| < 2^(mant-1)).
        const V magic = c(1.5 * std::ldexp(1.0, S::kMant));
        n = x * c(1.4426950408889634) + magic;
        n = n - magic;
        // Cody-Waite: ln2 split so that n*ln2_hi is exact.
        const double ln2_hi = std::is_same<T, float>::value ? 0.693145751953125 : 0.6931471803691238;
        const double ln2_lo = std::is_same<T, float>::value ? 1.428606765330187e-06 : 1.9082149292705877e-10;
        V r = x - n * c(ln2_hi);
        return r - n * c(ln2_lo);
    }

    static V exp(V x) { V n; const V r = reduce(x, n); return scale(exp_poly(r), n); }
    static V sigmoid(V x) { return c(1.0) / (c(1.0) + exp(-x)); }
    static V tanh(V x) {
        // tanh|x| = -m / (2 + m) with m = expm1(-2|x|) = 2^n p + (2^n - 1), p = expm1(r): where n = 0 that is
        // p itself, so tanh keeps full relative accuracy near zero. Then the sign of x.
        V n;
        const V r = reduce(c(-2.0) * abs(x), n);
        const V m = scale(expm1_poly(r), n) + (scale(c(1.0), n) - c(1.0));
        return copysign(m / (c(-2.0) - m), x);
    }
    // NaN propagates as in torch: relu(NaN) = NaN, and its gradient passes (torch masks only where h <= 0).
    static V relu(V x) { return max_nan_passes(c(0.0), x); }
    static V relu_grad(V h) { return h <= c(0.0) ? c(0.0) : c(1.0); }
};

// The scalar policy for the tail of a row, with the same formulas as the vector one.
template <typename T>
struct ScalarMath {
    static T c(double v) { return static_cast<T>(v); }
    static T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }
    static T tanh(T x) { return std::tanh(x); }
    static T relu(T x) { return x < T(0) ? T(0) : x; }
    static T relu_grad(T h) { return h <= T(0) ? T(0) : T(1); }
};

}  // namespace
