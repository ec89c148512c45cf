// compat.cuh: the little of CUDA that rnnfast's kernels use, as real CUDA under nvcc or as a host
// emulation under a plain C++ compiler (RNNFAST_CUDA_EMU), so that CI, which has nvcc but no GPU, runs the
// very kernel sources against the NumPy reference.
//
// What a kernel may use (and nothing else):
//   RF_GLOBAL, RF_DEVICE                      kernel and device-function qualifiers
//   threadIdx.x, blockIdx.x, blockDim.x, gridDim.x   (1-D grids and blocks only)
//   __syncthreads()                           a real barrier over the block's threads
//   rf::grid_sync()                           a barrier over every thread of the grid (cooperative launch)
//   rf::dyn_shared<T>()                       the block's dynamic shared memory
//   __shfl_xor_sync(mask, v, lane_mask)       within a warp of 32 (full mask only)
//   rf::expf / rf::tanhf                      math
// Host side: rf::launch(kernel, grid, block, shared_bytes, stream, cooperative, args...).
//
// Emulation limits (it is test infrastructure): every CUDA thread is a host thread, so grids of at most a
// few hundred threads (when the host cannot start them all, the launch fails with emu::kNoThreads);
// blocks must be a multiple of 32 threads; no streams (launches run synchronously);
// no memory spaces (device pointers are host pointers); barriers block (mutex and condition variable), so
// oversubscription is slow but correct. Shared memory is per block and zero-initialised.
#pragma once

#include <cmath>

#if !defined(RNNFAST_CUDA_EMU)
// ------------------------------------------------------------------------------------------ real CUDA
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#define RF_GLOBAL __global__
#define RF_DEVICE __device__ __forceinline__

namespace rf {
__device__ __forceinline__ void grid_sync() { cooperative_groups::this_grid().sync(); }

template <typename T>
__device__ __forceinline__ T* dyn_shared() {
    extern __shared__ __align__(16) unsigned char rf_shared_bytes[];
    return reinterpret_cast<T*>(rf_shared_bytes);
}

__device__ __forceinline__ float expf(float x) { return ::expf(x); }
__device__ __forceinline__ float tanhf(float x) { return ::tanhf(x); }

template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), int grid, int block, size_t shared_bytes, cudaStream_t stream,
                   bool cooperative, Args... args) {
    if (shared_bytes > 48 * 1024) {
        const cudaError_t st = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    static_cast<int>(shared_bytes));
        if (st != cudaSuccess) return st;
    }
    if (cooperative) {
        void* ptrs[] = {static_cast<void*>(&args)...};
        return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), dim3(grid), dim3(block), ptrs,
                                           shared_bytes, stream);
    }
    kernel<<<grid, block, shared_bytes, stream>>>(args...);
    return cudaGetLastError();
}
}  // namespace rf

#else
// ------------------------------------------------------------------------------------------ host emulation
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#define RF_GLOBAL
#define RF_DEVICE inline

typedef int cudaError_t;
typedef void* cudaStream_t;
static constexpr cudaError_t cudaSuccess = 0;

struct rf_dim { unsigned x = 1, y = 1, z = 1; };

namespace rf::emu {

// A reusable barrier for n blocking threads.
class Barrier {
  public:
    explicit Barrier(int n) : n_(n) {}
    void wait() {
        std::unique_lock<std::mutex> lock(m_);
        const uint64_t gen = gen_;
        if (++count_ == n_) {
            count_ = 0;
            ++gen_;
            cv_.notify_all();
        } else {
            cv_.wait(lock, [&] { return gen_ != gen; });
        }
    }

  private:
    int n_, count_ = 0;
    uint64_t gen_ = 0;
    std::mutex m_;
    std::condition_variable cv_;
};

struct Warp {
    explicit Warp(int n) : barrier(n) {}
    float lanes[32] = {};
    Barrier barrier;
};

struct Block {
    Block(int threads, size_t shared_bytes) : barrier(threads), shared(shared_bytes + 16, 0) {
        for (int w = 0; w < threads / 32; ++w) warps.emplace_back(new Warp(32));
    }
    Barrier barrier;
    std::vector<unsigned char> shared;
    std::vector<std::unique_ptr<Warp>> warps;
};

struct ThreadState {
    Block* block = nullptr;
    Barrier* grid = nullptr;
};

inline thread_local ThreadState self;

// Holds a launch's threads until every one has started; wait() then says whether to run the kernel.
class Gate {
  public:
    bool wait() {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [&] { return open_; });
        return run_;
    }
    void open(bool run) {
        {
            std::lock_guard<std::mutex> lock(m_);
            open_ = true;
            run_ = run;
        }
        cv_.notify_all();
    }

  private:
    bool open_ = false, run_ = false;
    std::mutex m_;
    std::condition_variable cv_;
};

static constexpr int kNoThreads = 2;  // launch error: the host could not start every thread

}  // namespace rf::emu

inline thread_local rf_dim threadIdx, blockIdx, blockDim, gridDim;

inline void __syncthreads() { rf::emu::self.block->barrier.wait(); }

inline float __shfl_xor_sync(unsigned /*mask*/, float v, int lane_mask) {
    rf::emu::Warp& w = *rf::emu::self.block->warps[threadIdx.x / 32];
    const unsigned lane = threadIdx.x % 32;
    w.lanes[lane] = v;
    w.barrier.wait();
    const float other = w.lanes[lane ^ static_cast<unsigned>(lane_mask)];
    w.barrier.wait();  // nobody overwrites a lane before every lane has read
    return other;
}

namespace rf {
inline void grid_sync() { emu::self.grid->wait(); }

template <typename T>
inline T* dyn_shared() {
    return reinterpret_cast<T*>(emu::self.block->shared.data());
}

inline float expf(float x) { return std::exp(x); }
inline float tanhf(float x) { return std::tanh(x); }

// Runs grid*block host threads, each as one CUDA thread; returns when all have finished. When the host
// cannot start them all (thread or address-space limits), the kernel must not run (its barriers would wait
// for the missing threads forever): the started threads are told to return at the gate, are joined, and the
// launch fails with emu::kNoThreads, so that the process never aborts with joinable threads.
template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), int grid, int block, size_t shared_bytes, cudaStream_t /*stream*/,
                   bool /*cooperative*/, Args... args) {
    if (grid < 1 || block < 32 || block % 32 != 0) throw std::invalid_argument("emulated launch: bad grid or block");
    emu::Barrier grid_barrier(grid * block);
    std::vector<std::unique_ptr<emu::Block>> blocks;
    for (int b = 0; b < grid; ++b) blocks.emplace_back(new emu::Block(block, shared_bytes));
    emu::Gate gate;
    std::vector<std::thread> threads;
    threads.reserve(static_cast<size_t>(grid) * block);
    auto finish = [&](bool run) {
        gate.open(run);
        for (std::thread& th : threads) th.join();
    };
    try {
        for (int b = 0; b < grid; ++b)
            for (int t = 0; t < block; ++t)
                threads.emplace_back([&, b, t] {
                    if (!gate.wait()) return;
                    threadIdx.x = t;
                    blockIdx.x = b;
                    blockDim.x = block;
                    gridDim.x = grid;
                    emu::self.block = blocks[b].get();
                    emu::self.grid = &grid_barrier;
                    kernel(args...);
                });
    } catch (const std::system_error&) {
        finish(false);
        return emu::kNoThreads;
    } catch (...) {
        finish(false);
        throw;
    }
    finish(true);
    return cudaSuccess;
}
}  // namespace rf

#endif
