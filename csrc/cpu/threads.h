// threads.h: a team of threads for one kernel call, and the spin barrier the recurrence meets once a step.
//
// The team comes from OpenMP (its pool stays warm between calls, so a call with 100 short steps does not
// pay for thread creation). The barrier is our own: a step of a small recurrence lasts a microsecond or
// two, and a sense-reversing spin on one cache line is several times cheaper than a generic barrier.
// After a while spinning it yields, so an oversubscribed machine still makes progress.
#pragma once

#include <atomic>
#include <thread>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

class Barrier {
  public:
    explicit Barrier(int n) : n_(n) {}
    void set_count(int n) { n_ = n; }
    void wait() {
        if (n_ <= 1) return;
        const int gen = gen_.load(std::memory_order_acquire);
        if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
            count_.store(0, std::memory_order_relaxed);
            gen_.store(gen + 1, std::memory_order_release);
        } else {
            for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
                if (spins < 20000) cpu_relax(); else std::this_thread::yield();
            }
        }
    }

  private:
    int n_;
    alignas(64) std::atomic<int> count_{0};
    alignas(64) std::atomic<int> gen_{0};
};

// Runs body(tid, team_size, barrier) on a team of up to `threads` threads. The body must not throw.
// The team may be smaller than asked (nested parallelism, thread limits); bodies split work by team_size.
template <class F>
void run_team(int threads, F&& body) {
    Barrier barrier(1);
    if (threads <= 1) {
        body(0, 1, barrier);
        return;
    }
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
    {
#pragma omp single
        barrier.set_count(omp_get_num_threads());
        // (implicit barrier after single: every thread sees the count)
        body(omp_get_thread_num(), omp_get_num_threads(), barrier);
    }
#else
    body(0, 1, barrier);
#endif
}

}  // namespace
