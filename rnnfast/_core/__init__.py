"""rnnfast's engine: what the public modules (layers, cells, torch, nn, io, ...) run on. Nothing in here is
public API; its names may change from one version to the next.

    ext         the compiled modules (the CPU kernels, the CUDA kernels and their host emulation), loaded here
    version     the package version
    cpus        how many CPUs this process may use (affinity mask, cgroup CPU quota)
    threads     how many threads a kernel call may use (rnnfast.set_num_threads)
    bf16        the boundary of bfloat16 modules: float32 copies in, one rounding out, gradients rounded once
    checks      the argument rules the front ends share
    pickling    pickling and copying of modules that cache the kernels' objects
    arrays      the array namespace of an array, aligned and reused buffers, poisoned outputs for tests
    kernels     the kernels a call runs on (CPU or CUDA) behind one interface, and the weights as they take them
    dispatch    the one place that decides which kernels a call runs on and how its weights are packed
    functional  the data flow: layers, directions, stacks, dropout, packed tokens
    tuning      the choices measured at first use, inside a short training step of a layer

Imports go one way (no cycles): version, ext, cpus, arrays < bf16 < threads, checks < pickling, kernels,
functional < tuning < dispatch; the public modules import from here, never the other way round.
"""
