// compare.cpp: the staleness check of packed weights, split across threads; and the crossing-cost probe.
//
// Every layer call compares the live weights with the copy they were packed from (so that an in-place
// update is never served stale). For a 1 MB W_hh that is about 20 us on one core, which is a tenth of a
// batch-1 forward of 100 steps; two cores halve it.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include "kernels.h"
#include "threads.h"

namespace rnnfast::cpu {

bool equal_bytes(const void* a, const void* b, size_t n, int threads) {
    constexpr size_t kChunk = 256 * 1024;
    if (n <= kChunk || threads <= 1) return std::memcmp(a, b, n) == 0;
    const size_t chunks = (n + kChunk - 1) / kChunk;
    std::atomic<bool> equal{true};
    run_team(static_cast<int>(std::min<size_t>(static_cast<size_t>(threads), chunks)),
             [&](int tid, int team, Barrier&) {
                 const size_t c0 = chunks * tid / team, c1 = chunks * (tid + 1) / team;
                 const size_t lo = c0 * kChunk, hi = std::min(n, c1 * kChunk);
                 if (hi > lo && std::memcmp(static_cast<const char*>(a) + lo, static_cast<const char*>(b) + lo,
                                            hi - lo) != 0)
                     equal.store(false, std::memory_order_relaxed);
             });
    return equal.load();
}

}  // namespace rnnfast::cpu

namespace rnnfast::cpu {

double core_round_trip_ns(int iterations, double max_ms) {
    // Two threads of the kernels' team bounce a counter: what one barrier crossing costs at least. On a VM
    // it changes with where the host places the vCPUs, and the batch-1 recurrences follow it. The probe
    // stops after max_ms even when fewer round trips were done: where both threads share a core each round
    // trip is a context switch, and the answer (crossings are dear) is clear long before `iterations`.
    std::atomic<int> ping{0}, pong{0};
    double ns = 0;
    run_team(2, [&](int tid, int team, Barrier& barrier) {
        if (team < 2) return;
        barrier.wait(tid);
        if (tid == 0) {
            const auto t0 = std::chrono::steady_clock::now();
            const auto stop = t0 + std::chrono::duration<double, std::milli>(max_ms);
            int done = 0;
            while (done < iterations) {
                const int i = done + 1;
                ping.store(i, std::memory_order_release);
                spin_until([&] { return pong.load(std::memory_order_acquire) == i; });
                done = i;
                if ((done & 15) == 0 && std::chrono::steady_clock::now() > stop) break;
            }
            ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / done;
            ping.store(-1, std::memory_order_release);  // tells the other thread to leave
        } else {
            for (int seen = 0;;) {
                int p = 0;
                spin_until([&] { return (p = ping.load(std::memory_order_acquire)) != seen; });
                if (p < 0) break;
                pong.store(seen = p, std::memory_order_release);
            }
        }
    });
    return ns;
}

}  // namespace rnnfast::cpu
