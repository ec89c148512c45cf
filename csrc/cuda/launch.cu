// launch.cu: host side of the CUDA recurrences: switches on the cell once, picks the persistent or the
// per-step path, sizes the grid, moves the step table (and a two-phase cell's scratch) to the device and
// launches, checking every CUDA status. Compiled by nvcc for _rnnfast._cuda and, through launch_emu.cpp, by
// the host compiler for _rnnfast._cuda_emu.
#include <cstring>
#include <string>
#include <vector>

#include "recurrence.cuh"
#include "recurrence_gru_original.cuh"
#include "recurrence_lstm_proj.cuh"

namespace rnnfast_cuda {

namespace {

#define RF_CHECK(call)                                                                       \
    do {                                                                                     \
        const cudaError_t st_ = (call);                                                      \
        if (st_ != cudaSuccess) return std::string(#call) + ": " + error_string(st_);        \
    } while (0)

#if !defined(RNNFAST_CUDA_EMU)
std::string error_string(cudaError_t st) { return std::string(cudaGetErrorName(st)) + ": " + cudaGetErrorString(st); }

struct Device {
    int sms = 1, max_shared = 48 * 1024, cooperative = 0;
};

std::string query(Device& d) {
    int dev = 0;
    RF_CHECK(cudaGetDevice(&dev));
    RF_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
    RF_CHECK(cudaDeviceGetAttribute(&d.max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    RF_CHECK(cudaDeviceGetAttribute(&d.cooperative, cudaDevAttrCooperativeLaunch, dev));
    return {};
}

// How many blocks of this kernel can be resident at once (what a cooperative launch may use).
template <typename K>
std::string coresident(K kernel, int threads, size_t shared, const Device& d, int& blocks) {
    int per_sm = 0;
    if (shared > 48 * 1024)
        RF_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
    RF_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared));
    blocks = per_sm * d.sms;
    return {};
}

// Device memory for the duration of the launches, allocated and freed in stream order.
struct DeviceBuffer {
    void* dev = nullptr;
    cudaStream_t stream = nullptr;
    std::string alloc(size_t bytes, cudaStream_t s) {
        stream = s;
        if (bytes) RF_CHECK(cudaMallocAsync(&dev, bytes, s));
        return {};
    }
    std::string upload(const void* host, size_t bytes, cudaStream_t s) {
        std::string err = alloc(bytes, s);
        if (err.empty() && bytes) RF_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, s));
        return err;
    }
    ~DeviceBuffer() {
        if (dev) cudaFreeAsync(dev, stream);
    }
};
#else
std::string error_string(cudaError_t st) {
    if (st == rf::emu::kNoThreads)
        return "the host could not start a thread for every emulated CUDA thread (thread or address-space limit)";
    return "emulated launch failed (" + std::to_string(st) + ")";
}

// The emulation's pretend device: small, so that tests exercise several blocks and both paths.
struct Device {
    int sms = 4, max_shared = 48 * 1024, cooperative = 1;
};
std::string query(Device&) { return {}; }
template <typename K>
std::string coresident(K, int, size_t, const Device& d, int& blocks) {
    blocks = d.sms * 2;
    return {};
}
struct DeviceBuffer {
    std::vector<unsigned char> host;
    void* dev = nullptr;
    std::string alloc(size_t bytes, cudaStream_t) {
        host.resize(bytes);
        dev = host.data();
        return {};
    }
    std::string upload(const void* src, size_t bytes, cudaStream_t s) {
        alloc(bytes, s);
        if (bytes) std::memcpy(dev, src, bytes);
        return {};
    }
};
#endif

// Units per block: spread the units over the SMs (one block each), unless asked otherwise.
int pick_units(const Device& d, int H, int requested) {
    if (requested > 0) return requested < H ? requested : H;
    const int u = (H + d.sms - 1) / d.sms;
    return u > 0 ? u : 1;
}

// Runs all steps of one kernel: the persistent path (one cooperative launch, `nphases` phases a step with a
// grid barrier between them) or the per-step path (a launch per phase per step). shared(U, persistent) is
// the dynamic shared memory a block needs; scratch_floats the device scratch the kernel's phases share.
template <typename Params, typename Shared>
std::string launch_steps(const Request& q, const Params& p, void (*kernel)(Params, Grid), int nphases,
                         bool forward_order, Shared shared, size_t scratch_floats, cudaStream_t stream,
                         int* used_path) {
    Device d;
    std::string err = query(d);
    if (!err.empty()) return err;
    Grid g{};
    g.U = pick_units(d, p.H, q.units_per_block);
    const int blocks = (p.H + g.U - 1) / g.U;
    const size_t shared_persistent = shared(g.U, true);
    int path = q.path;
    if (path == kAuto) {
        int resident = 0;
        err = coresident(kernel, q.threads, shared_persistent, d, resident);
        if (!err.empty()) return err;
        path = d.cooperative && shared_persistent <= static_cast<size_t>(d.max_shared) && blocks <= resident
                   ? kPersistent : kPerStep;
    }
    if (path == kPersistent && shared_persistent > static_cast<size_t>(d.max_shared))
        return "persistent path: W_hh's slice needs " + std::to_string(shared_persistent) +
               " bytes of shared memory per block, the device has " + std::to_string(d.max_shared);
    if (used_path) *used_path = path;
    // The step table: batch sizes, then each step's first token row.
    std::vector<int64_t> table(2 * static_cast<size_t>(p.T));
    for (int t = 0; t < p.T; ++t) {
        table[t] = p.batch_sizes[t];
        table[p.T + t] = t ? table[p.T + t - 1] + table[t - 1] : 0;
    }
    DeviceBuffer steps, scratch;
    err = steps.upload(table.data(), table.size() * sizeof(int64_t), stream);
    if (err.empty()) err = scratch.alloc(scratch_floats * sizeof(float), stream);
    if (!err.empty()) return err;
    g.bs = static_cast<const int64_t*>(steps.dev);
    g.off = g.bs + p.T;
    g.scratch = static_cast<float*>(scratch.dev);
    if (path == kPersistent) {
        g.persistent = 1;
        g.t_begin = 0;
        g.t_end = p.T;
        g.phases = (1 << nphases) - 1;
        RF_CHECK(rf::launch(kernel, blocks, q.threads, shared_persistent, stream, true, p, g));
        return {};
    }
    g.persistent = 0;
    const size_t shared_step = shared(g.U, false);
    for (int s = 0; s < p.T; ++s) {
        const int t = forward_order ? s : p.T - 1 - s;
        g.t_begin = t;
        g.t_end = t + 1;
        for (int phase = 0; phase < nphases; ++phase) {
            g.phases = 1 << phase;
            RF_CHECK(rf::launch(kernel, blocks, q.threads, shared_step, stream, false, p, g));
        }
    }
    return {};
}

size_t no_shared(int, bool) { return 0; }

}  // namespace

std::string forward(const Request& q, const FwdParams& p, void* stream, int* used_path) {
    using namespace rnnfast;
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    auto single = [&](auto cell) {
        using Cell = decltype(cell);
        auto shared = [&](int U, bool persistent) {
            return sizeof(float) * forward_shared_floats(Cell::kGates, p.H, U, p.B, persistent);
        };
        return launch_steps(q, p, forward_kernel<Cell>, 1, true, shared, 0, s, used_path);
    };
    const size_t scratch = 2 * static_cast<size_t>(p.B) * p.H;
    switch (p.cell) {
        case kRnnTanh: return single(RnnTanh{});
        case kRnnRelu: return single(RnnRelu{});
        case kLstm:
            return p.P ? launch_steps(q, p, lstm_proj_forward_kernel, 2, true, no_shared, scratch, s, used_path)
                       : single(Lstm{});
        case kGru: return single(Gru{});
        case kGruOriginal: return launch_steps(q, p, gru_original_forward_kernel, 2, true, no_shared, scratch, s, used_path);
        default: return "cell: unknown id " + std::to_string(p.cell);
    }
}

std::string backward(const Request& q, const BwdParams& p, void* stream, int* used_path) {
    using namespace rnnfast;
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    auto single = [&](auto cell) {
        using Cell = decltype(cell);
        auto shared = [&](int U, bool persistent) {
            return sizeof(float) * backward_shared_floats(Cell::kGates, p.H, U, persistent);
        };
        return launch_steps(q, p, backward_kernel<Cell>, 2, false, shared, 0, s, used_path);
    };
    switch (p.cell) {
        case kRnnTanh: return single(RnnTanh{});
        case kRnnRelu: return single(RnnRelu{});
        case kLstm: return p.P ? launch_steps(q, p, lstm_proj_backward_kernel, 3, false, no_shared, 0, s, used_path)
                               : single(Lstm{});
        case kGru: return single(Gru{});
        case kGruOriginal: return launch_steps(q, p, gru_original_backward_kernel, 3, false, no_shared, 0, s, used_path);
        default: return "cell: unknown id " + std::to_string(p.cell);
    }
}

}  // namespace rnnfast_cuda
