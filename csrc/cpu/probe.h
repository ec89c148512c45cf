// probe.h: the cache read bandwidth that a batch-1 step's floor is counted against (bench/floor.py).
//
// A batch-1 step reads every thread's share of W_hh once and meets the others at one barrier, so its floor is
// (bytes per thread) / (one thread's read bandwidth at that footprint) + a crossing. The probe reads with the
// same full-width vector loads the kernels use (it lives in the ISA library for that reason), each thread its
// own buffer of the given size, so the footprint decides whether L1, L2 or L3 answers.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <vector>

#include "simd.h"
#include "threads.h"

namespace {

// Aggregate GB/s of `threads` threads each summing its own `bytes`-sized buffer: the best of `reps` passes,
// every pass started and ended at a barrier so the time is the slowest thread's.
inline double read_gbps(size_t bytes, int threads, int reps) {
    using V = Simd<float>::V;
    constexpr int W = Simd<float>::W, kAcc = 8;  // 8 independent sums: the adds never limit the loads
    const size_t n = std::max<size_t>(bytes / sizeof(float) / (W * kAcc), 1) * (W * kAcc);
    std::vector<std::vector<float>> bufs(static_cast<size_t>(threads), std::vector<float>(n));  // no throw below
    double best = 1e300;
    int readers = 1;
    // Small buffers are read several times a pass so that the barriers and the clock do not count.
    const size_t repeat = std::max<size_t>(1, (size_t(1) << 20) / (n * sizeof(float)));
    constexpr size_t kAhead = 4096;
    volatile float sink = 0;
    run_team(threads, [&](int tid, int team, Barrier& barrier) {
        std::vector<float>& buf = bufs[static_cast<size_t>(tid)];
        std::fill(buf.begin(), buf.end(), 1.0f);  // into the reader's own caches
        float total = 0;
        for (int r = 0; r <= reps; ++r) {  // pass 0 warms the caches
            barrier.wait(tid);
            const auto t0 = std::chrono::steady_clock::now();
            V acc[kAcc] = {};
            for (size_t rep = 0; rep < repeat; ++rep)
                for (size_t i = 0; i < n; i += W * kAcc) {
                    // Prefetched ahead as the kernels' short-tile products do: the bandwidth they can reach.
#pragma GCC unroll 8
                    for (size_t l = 0; l < W * kAcc * sizeof(float); l += 64)
                        __builtin_prefetch(reinterpret_cast<const char*>(buf.data() + i) + kAhead + l);
#pragma GCC unroll 8
                    for (int j = 0; j < kAcc; ++j) acc[j] += loadu<V>(buf.data() + i + j * W);
                }
            for (int j = 1; j < kAcc; ++j) acc[0] += acc[j];
            for (int j = 0; j < W; ++j) total += acc[0][j];
            barrier.wait(tid);
            if (tid == 0 && r > 0) {
                const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                best = std::min(best, s);
                readers = team;  // the team may be smaller than asked
            }
        }
        if (tid == 0) sink = total;
    });
    (void)sink;
    return static_cast<double>(n * sizeof(float)) * repeat * readers / best / 1e9;
}

}  // namespace
