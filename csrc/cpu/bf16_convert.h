// bf16_convert.h: bfloat16 <-> float32 at the boundary of the NumPy API's bf16 modules, as ml_dtypes' astype
// converts (round to nearest even, subnormals kept, a NaN to the quiet NaN of its sign): a bf16 module's float32
// copies of its values, its results rounded once, its gradients summed in float32 and rounded into .grad.
//
// Not the kernels' rounding (gemm_bf16.h), which flushes subnormals as vcvtne2ps2bf16 does: the boundary must give
// what ml_dtypes and torch give. Written by hand because NumPy's cast through ml_dtypes converts one element per
// call (about 4.5 ms per million elements on a Zen 3 core); these loops are branch-free and vectorize.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace rnnfast::cpu {

inline float bf16_to_float(uint16_t b) {
    uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet_nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
    return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

inline void bf16_to_float(const uint16_t* in, std::ptrdiff_t n, float* out) {
    for (std::ptrdiff_t i = 0; i < n; ++i) out[i] = bf16_to_float(in[i]);
}

inline void float_to_bf16(const float* in, std::ptrdiff_t n, uint16_t* out) {
    for (std::ptrdiff_t i = 0; i < n; ++i) out[i] = float_to_bf16(in[i]);
}

// acc = bf16(acc + g): a gradient summed in float32 and rounded into a bf16 .grad once.
inline void add_float_to_bf16(uint16_t* acc, const float* g, std::ptrdiff_t n) {
    for (std::ptrdiff_t i = 0; i < n; ++i) acc[i] = float_to_bf16(bf16_to_float(acc[i]) + g[i]);
}

}  // namespace rnnfast::cpu
