// aligned.h: std::vector storage that starts on a cache line, for every buffer the kernels read or write in
// SIMD vectors (scratch rows, packed panels, sums).
//
// Why: malloc gives 16-byte alignment, and a large block (mmap) starts 16 bytes past a page, so each 64-byte
// vector of such a buffer straddles two cache lines: two L1 accesses per load, a split store per store.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>
#include <vector>

namespace {

constexpr std::size_t kCacheLine = 64;

template <typename T>
struct CacheLineAllocator {
    using value_type = T;
    CacheLineAllocator() = default;
    template <typename U>
    CacheLineAllocator(const CacheLineAllocator<U>&) {}
    T* allocate(std::size_t n) {
        if (n > static_cast<std::size_t>(-1) / sizeof(T) - kCacheLine) throw std::bad_alloc();
        // aligned_alloc wants a size that is a multiple of the alignment.
        const std::size_t bytes = (n * sizeof(T) + kCacheLine - 1) / kCacheLine * kCacheLine;
        void* p = std::aligned_alloc(kCacheLine, bytes == 0 ? kCacheLine : bytes);
        if (!p) throw std::bad_alloc();
        return static_cast<T*>(p);
    }
    void deallocate(T* p, std::size_t) { std::free(p); }
    template <typename U>
    bool operator==(const CacheLineAllocator<U>&) const { return true; }
    template <typename U>
    bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};

template <typename T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

}  // namespace
