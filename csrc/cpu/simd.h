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
template <typename T>
struct VecMath {
    using S = Simd<T>;
    using V = typename S::V;
    using I = typename S::I;

    static V c(double v) { return splat<V>(static_cast<T>(v)); }

    // p(r) = expm1(r) for |r| <= ln2/2
    static V expm1_poly(V r) {
        if constexpr (std::is_same<T, float>::value) {
            V p = c(1.0 / 5040);
            p = p * r + c(1.0 / 720);
            p = p * r + c(1.0 / 120);
            p = p * r + c(1.0 / 24);
            p = p * r + c(1.0 / 6);
            p = p * r + c(0.5);
            p = p * r + c(1.0);
            return p * r;
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
            p = p * r + c(1.0);
            return p * r;
        }
    }

    // x = n ln2 + r; returns s = 2^n and p = expm1(r), so exp(x) = s + s*p.
    static void reduce(V x, V& s, V& p) {
        x = x < c(S::kLo) ? c(S::kLo) : x;
        x = x > c(S::kHi) ? c(S::kHi) : x;
        // Round to nearest with the 1.5*2^mant trick (exact for |x*log2e| < 2^(mant-1)).
        const V magic = c(1.5 * std::ldexp(1.0, S::kMant));
        V n = x * c(1.4426950408889634) + magic;
        n = n - magic;
        // Cody-Waite: ln2 split so that n*ln2_hi is exact.
        const double ln2_hi = std::is_same<T, float>::value ? 0.693145751953125 : 0.6931471803691238;
        const double ln2_lo = std::is_same<T, float>::value ? 1.428606765330187e-06 : 1.9082149292705877e-10;
        V r = x - n * c(ln2_hi);
        r = r - n * c(ln2_lo);
        p = expm1_poly(r);
        I ni = __builtin_convertvector(n, I);
        I bits = (ni + static_cast<typename S::IntS>(S::kBias)) << S::kMant;
        s = (V)bits;  // same-size vector cast: reinterprets the bits
    }

    static V exp(V x) { V s, p; reduce(x, s, p); return s + s * p; }
    static V sigmoid(V x) { return c(1.0) / (c(1.0) + exp(-x)); }
    static V tanh(V x) {
        // tanh|x| = -m / (2 + m) with m = expm1(-2|x|), then the sign of x.
        const V ax = x < c(0.0) ? -x : x;
        V s, p;
        reduce(c(-2.0) * ax, s, p);
        const V m = (s - c(1.0)) + s * p;
        const V t = -m / (c(2.0) + m);
        return x < c(0.0) ? -t : t;
    }
    // NaN propagates as in torch: relu(NaN) = NaN, and its gradient passes (torch masks only where h <= 0).
    static V relu(V x) { return x < c(0.0) ? c(0.0) : x; }
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
