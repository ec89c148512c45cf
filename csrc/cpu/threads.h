// threads.h: a team of threads for one kernel call, and the spin barrier the recurrence meets once a step.
//
// The team comes from OpenMP (its pool stays warm between calls, so a call with 100 short steps does not
// pay for thread creation). The barrier is our own: a step of a small recurrence lasts a microsecond or
// two, and a sense-reversing spin on one cache line is several times cheaper than a generic barrier.
// After a while spinning it yields, so an oversubscribed machine still makes progress.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
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

inline int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Waits until done() holds: spinning first (a step's wait is well under a microsecond when each thread has a
// core: a few dozen pauses), then yielding, so that a thread sharing its core with the one it waits for (an
// oversubscribed process, a CPU quota, a VM whose vCPU the host took away) hands the core over instead of
// burning its time slice. A pure spin there made each crossing cost a whole slice (milliseconds: seen as a
// 30 s hang of the crossing probe). 2000 pauses are 50-100 us on current x86 cores; a yield with nothing else
// to run returns in under a microsecond, so a long legitimate wait loses little.
// Returns the nanoseconds waited after the spin (0 on the fast path, which reads no clock): what TeamPressure
// reads.
template <class Done>
inline int64_t spin_until(Done&& done) {
    for (int spins = 0; spins < 2000; ++spins) {
        if (done()) return 0;
        cpu_relax();
    }
    const int64_t t0 = now_ns();
    while (!done()) std::this_thread::yield();
    return now_ns() - t0;
}

// Whether this process's teams are starved: a team whose members spent most of a call waiting at its barriers,
// each wait past the spin, was waiting for a member the OS had taken off its core (another process on it, a CPU
// quota, a vCPU the host took away). There every step's crossing can cost a scheduler time slice: LSTM(1, 32)
// at batch 32 trained 10x slower beside one busy process. Teams then run on one thread for a while (the backoff
// doubles while the pressure lasts, from kMinBackoff to kMaxBackoff; a calm team call halves it again), and the
// next team call after that looks again. Only the team size changes, never an order of sums (the recurrences'
// nominal split, the GEMMs' splits), so results do not depend on it. Requests for an exact thread count (tests)
// are never reduced.
class TeamPressure {
  public:
    static TeamPressure& instance() {
        static TeamPressure p;
        return p;
    }
    bool solo() const { return now_ns() < solo_until_.load(std::memory_order_relaxed); }
    // One team call of `call_ns` whose most patient member waited `wait_ns` past the spin.
    void report(int64_t call_ns, int64_t wait_ns) {
        int64_t backoff = backoff_ns_.load(std::memory_order_relaxed);
        if (wait_ns > kMinWaitNs && 2 * wait_ns > call_ns) {
            solo_until_.store(now_ns() + backoff, std::memory_order_relaxed);
            backoff_ns_.store(std::min(2 * backoff, kMaxBackoffNs), std::memory_order_relaxed);
            starved_.fetch_add(1, std::memory_order_relaxed);
        } else if (8 * wait_ns < call_ns) {
            backoff_ns_.store(std::max(backoff / 2, kMinBackoffNs), std::memory_order_relaxed);
        }
    }
    int64_t starved_calls() const { return starved_.load(std::memory_order_relaxed); }

  private:
    static constexpr int64_t kMinWaitNs = 200000, kMinBackoffNs = 50000000, kMaxBackoffNs = 1000000000;
    std::atomic<int64_t> solo_until_{0}, backoff_ns_{kMinBackoffNs}, starved_{0};
};

// The team a call asks for: one thread while TeamPressure says the process's teams are starved, unless the
// count is exact (negative: tests exercising the split). Returns the magnitude.
inline int team_request(int requested) {
    if (requested < 0) return -requested;
    return requested > 1 && TeamPressure::instance().solo() ? 1 : requested;
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
        Slot& mine = slots_[static_cast<size_t>(tid)];
        for (int j = 0; j < n_; ++j) {
            if (j == tid) continue;
            const std::atomic<uint64_t>& other = slots_[static_cast<size_t>(j)].reached;
            mine.waited_ns += spin_until([&] { return other.load(std::memory_order_acquire) >= epoch; });
        }
    }

    // The longest any member waited past the spin, summed over the call (read after the team has joined).
    int64_t longest_wait_ns() const {
        int64_t w = 0;
        for (int j = 0; j < n_; ++j) w = std::max(w, slots_[static_cast<size_t>(j)].waited_ns);
        return w;
    }

  private:
    struct alignas(64) Slot {
        std::atomic<uint64_t> reached{0};
        uint64_t reached_local = 0;  // only its owner touches these two
        int64_t waited_ns = 0;
    };
    int n_;
    std::vector<Slot> slots_;
};

// Runs body(tid, team_size, barrier) on a team of up to `threads` threads. The body must not throw.
// The team may be smaller than asked (nested parallelism, thread limits); bodies split work by team_size.
// A team's call tells TeamPressure how long its members waited.
template <class F>
void run_team(int threads, F&& body) {
    Barrier barrier(threads > 1 ? threads : 1);
    if (threads <= 1) {
        body(0, 1, barrier);
        return;
    }
#if defined(_OPENMP)
    const int64_t t0 = now_ns();
#pragma omp parallel num_threads(threads)
    {
        // The team may be smaller than asked (nested parallelism, thread limits).
#pragma omp single
        barrier.set_count(omp_get_num_threads());
        // (implicit barrier after single: every thread sees the count)
        body(omp_get_thread_num(), omp_get_num_threads(), barrier);
    }
    TeamPressure::instance().report(now_ns() - t0, barrier.longest_wait_ns());
#else
    barrier.set_count(1);
    body(0, 1, barrier);
#endif
}

}  // namespace
