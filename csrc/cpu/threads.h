// threads.h: a team of threads for one kernel call, and the spin barrier the recurrence meets once a step.
//
// The team comes from OpenMP (its pool stays warm between calls, so a call with 100 short steps does not
// pay for thread creation). The barrier is our own: a step of a small recurrence lasts a microsecond or
// two, and a sense-reversing spin on one cache line is several times cheaper than a generic barrier.
// After a while spinning it yields, so an oversubscribed machine still makes progress.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// Waits until done() holds: spinning first (a step's wait is well under a microsecond when each thread has a
// core: a few dozen pauses), then yielding, so that a thread sharing its core with the one it waits for (an
// oversubscribed process, a CPU quota, a VM whose vCPU the host took away) hands the core over instead of
// burning its time slice. A pure spin there made each crossing cost a whole slice (milliseconds: seen as a
// 30 s hang of the crossing probe). 2000 pauses are 50-100 us on current x86 cores; a yield with nothing else
// to run returns in under a microsecond, so a long legitimate wait loses little.
template <class Done>
inline void spin_until(Done&& done) {
    for (int spins = 0; !done(); ++spins) {
        if (spins < 2000) cpu_relax(); else std::this_thread::yield();
    }
}

// Each thread publishes how many barriers it has reached on a cache line of its own and waits until
// every other thread has reached as many. A crossing costs one cache-line transfer per pair instead of
// the several round trips of a shared counter (measured here between two cores: about 0.4 us a step with a shared counter, 0.05 us with this).
class Barrier {
  public:
    explicit Barrier(int capacity) : n_(capacity), slots_(static_cast<size_t>(capacity > 0 ? capacity : 1)) {}
    void set_count(int n) { n_ = n; }  // at most the capacity
    void wait(int tid) { wait_for(tid, arrive(tid)); }

    // A split crossing: arrive() publishes this thread's progress and returns at once, so that it can work
    // on what needs no one else's data; wait_for() then waits for the others. Between the two a thread must
    // not touch what the others produce in this phase.
    uint64_t arrive(int tid) {
        if (n_ <= 1) return 0;
        Slot& mine = slots_[static_cast<size_t>(tid)];
        const uint64_t epoch = ++mine.reached_local;
        mine.reached.store(epoch, std::memory_order_release);
        return epoch;
    }

    void wait_for(int tid, uint64_t epoch) {
        if (n_ <= 1) return;
        for (int j = 0; j < n_; ++j) {
            if (j == tid) continue;
            const std::atomic<uint64_t>& other = slots_[static_cast<size_t>(j)].reached;
            spin_until([&] { return other.load(std::memory_order_acquire) >= epoch; });
        }
    }

  private:
    struct alignas(64) Slot {
        std::atomic<uint64_t> reached{0};
        uint64_t reached_local = 0;  // only its owner touches it
    };
    int n_;
    std::vector<Slot> slots_;
};

// Runs body(tid, team_size, barrier) on a team of up to `threads` threads. The body must not throw.
// The team may be smaller than asked (nested parallelism, thread limits); bodies split work by team_size.
template <class F>
void run_team(int threads, F&& body) {
    Barrier barrier(threads > 1 ? threads : 1);
    if (threads <= 1) {
        body(0, 1, barrier);
        return;
    }
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
    {
        // The team may be smaller than asked (nested parallelism, thread limits).
#pragma omp single
        barrier.set_count(omp_get_num_threads());
        // (implicit barrier after single: every thread sees the count)
        body(omp_get_thread_num(), omp_get_num_threads(), barrier);
    }
#else
    barrier.set_count(1);
    body(0, 1, barrier);
#endif
}

}  // namespace
