// compare.cpp: the staleness check of packed weights, split across threads.
//
// Every layer call compares the live weights with the copy they were packed from (so that an in-place
// update is never served stale). For a 1 MB W_hh that is about 20 us on one core, which is a tenth of a
// batch-1 forward of 100 steps; two cores halve it.
#include <algorithm>
#include <atomic>
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
