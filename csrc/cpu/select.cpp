// select.cpp: checks the processor, then loads the one instruction-set library it can run.
//
// This file is compiled into _rnnfast._C with the baseline flags of the target (no -m options), as is
// everything that runs before the check. The kernels live in three shared libraries beside _C
// (rnnfast_cpu_avx512.so, rnnfast_cpu_avx2.so, rnnfast_cpu_generic.so), each built alone with its own flags
// and hidden visibility; only the chosen one is ever opened, so not even its static initialisers run on a
// processor that lacks its instructions. (One shared object holding several -m builds is what crashed with
// SIGILL on CPUs without AVX-512: inline functions compiled for AVX-512 were kept for every caller.)
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels.h"

namespace rnnfast::cpu {

namespace {

// Whether the processor (and the OS, for the wider register state) runs a library's instructions.
bool supports(const std::string& name) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (name == "avx512")
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return name == "generic";
}

// The folder this code was loaded from (site-packages/_rnnfast, where the kernel libraries are installed beside
// _C), with a trailing slash.
std::string own_folder() {
    Dl_info info{};
    if (!dladdr(reinterpret_cast<const void*>(&own_folder), &info) || !info.dli_fname)
        throw std::runtime_error("rnnfast: cannot locate the _C module on disk (dladdr failed)");
    std::string path = info.dli_fname;
    const size_t slash = path.rfind('/');
    return slash == std::string::npos ? std::string("./") : path.substr(0, slash + 1);
}

const Isa& load(const std::string& name) {
    const std::string file = own_folder() + "rnnfast_cpu_" + name + ".so";
    // RTLD_LOCAL: nothing of the library joins the global symbol scope; it exports one symbol anyway.
    void* lib = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) throw std::runtime_error("rnnfast: cannot load the " + name + " kernels: " + dlerror());
    using Entry = const Isa* (*)(int);
    auto entry = reinterpret_cast<Entry>(dlsym(lib, "rnnfast_cpu_kernels"));
    const Isa* isa = entry ? entry(kAbiVersion) : nullptr;
    if (!isa)
        throw std::runtime_error("rnnfast: " + file + " is not a kernel library of this version of rnnfast "
                                 "(reinstall the package)");
    return *isa;  // the library stays loaded for the life of the process
}

const Isa& pick() {
    static const char* const widest_first[] = {"avx512", "avx2", "generic"};
    // RNNFAST_ISA=avx2|generic forces a narrower library (tests of the fallbacks); a request the processor
    // cannot run is ignored.
    const char* want = std::getenv("RNNFAST_ISA");
    if (want && *want && supports(want))
        for (const char* name : widest_first)
            if (!std::strcmp(name, want)) return load(name);
    for (const char* name : widest_first)
        if (supports(name)) return load(name);
    return load("generic");
}

}  // namespace

const Isa& select() {
    // A throw leaves the static uninitialised, so a later call tries again and raises the same error.
    static const Isa& chosen = pick();
    return chosen;
}

}  // namespace rnnfast::cpu
