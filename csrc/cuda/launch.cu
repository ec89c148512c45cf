// launch.cu: host side of the CUDA recurrences: picks the persistent or the per-step path, sizes the grid,
// moves the step table to the device and launches, checking every CUDA status. Compiled by nvcc for
// rnnfast._cuda and, through launch_emu.cpp, by the host compiler for rnnfast._cuda_emu.
#include <string>

#include "recurrence.cuh"
#include "recurrence_two_phase.cuh"

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

// The step table (bs, off) in device memory for the duration of the launches, freed in stream order.
struct StepTable {
    int64_t* dev = nullptr;
    cudaStream_t stream;
    std::string upload(const int64_t* host, size_t n, cudaStream_t s) {
        stream = s;
        RF_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&dev), n * sizeof(int64_t), s));
        RF_CHECK(cudaMemcpyAsync(dev, host, n * sizeof(int64_t), cudaMemcpyHostToDevice, s));
        return {};
    }
    ~StepTable() {
        if (dev) cudaFreeAsync(dev, stream);
    }
};
#else
std::string error_string(cudaError_t st) { return "emulated launch failed (" + std::to_string(st) + ")"; }

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
struct StepTable {
    const int64_t* dev = nullptr;
    std::string upload(const int64_t* host, size_t, cudaStream_t) {
        dev = host;
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

bool two_phase(int cell, int P) { return cell == kGruOriginal || P > 0; }

// Runs all steps of one kernel: the persistent path (one cooperative launch, `nphases` phases a step with a
// grid barrier between them) or the per-step path (a launch per phase per step). shared(U, persistent) is
// the dynamic shared memory a block needs.
template <typename Params, typename K, typename Shared>
std::string launch_steps(const Request& q, Params p, K kernel, int nphases, bool forward_order, Shared shared,
                         cudaStream_t stream, int* used_path) {
    Device d;
    std::string err = query(d);
    if (!err.empty()) return err;
    p.U = pick_units(d, p.H, q.units_per_block);
    const int blocks = (p.H + p.U - 1) / p.U;
    const size_t shared_persistent = shared(p.U, true);
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
    StepTable table;
    err = table.upload(q.steps, 2 * static_cast<size_t>(p.T), stream);
    if (!err.empty()) return err;
    p.bs = table.dev;
    p.off = table.dev + p.T;
    if (path == kPersistent) {
        p.persistent = 1;
        p.t_begin = 0;
        p.t_end = p.T;
        RF_CHECK(rf::launch(kernel, blocks, q.threads, shared_persistent, stream, true, p, (1 << nphases) - 1));
        return {};
    }
    p.persistent = 0;
    const size_t shared_step = shared(p.U, false);
    for (int s = 0; s < p.T; ++s) {
        const int t = forward_order ? s : p.T - 1 - s;
        p.t_begin = t;
        p.t_end = t + 1;
        for (int phase = 0; phase < nphases; ++phase)
            RF_CHECK(rf::launch(kernel, blocks, q.threads, shared_step, stream, false, p, 1 << phase));
    }
    return {};
}

}  // namespace

std::string forward(const Request& q, const FwdParams& p, void* stream, int* used_path) {
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (two_phase(p.cell, p.P))
        return launch_steps(q, p, forward_two_phase_kernel, 2, true, [](int, bool) { return size_t(0); }, s,
                            used_path);
    auto shared = [&](int U, bool persistent) {
        return sizeof(float) * forward_shared_floats(p.G, p.H, U, p.B, persistent);
    };
    return launch_steps(q, p, forward_kernel, 1, true, shared, s, used_path);
}

std::string backward(const Request& q, const BwdParams& p, void* stream, int* used_path) {
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (two_phase(p.cell, p.P))
        return launch_steps(q, p, backward_two_phase_kernel, 3, false, [](int, bool) { return size_t(0); }, s,
                            used_path);
    auto shared = [&](int U, bool persistent) {
        return sizeof(float) * backward_shared_floats(p.G, p.H, U, persistent);
    };
    return launch_steps(q, p, backward_kernel, 2, false, shared, s, used_path);
}

}  // namespace rnnfast_cuda
