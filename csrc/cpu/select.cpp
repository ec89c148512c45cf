// select.cpp: picks the instruction-set build at run time.
#include <cstdlib>
#include <cstring>

#include "kernels.h"

namespace rnnfast::cpu {

namespace {
bool supports(const char* name) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (!std::strcmp(name, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
    if (!std::strcmp(name, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return !std::strcmp(name, "generic");
}

const Isa& pick() {
    // RNNFAST_ISA=avx2|generic forces a narrower build (tests of the fallbacks); a request the
    // processor cannot run is ignored.
    const char* want = std::getenv("RNNFAST_ISA");
#if defined(__x86_64__) || defined(__i386__)
    const Isa* all[] = {&avx512::isa(), &avx2::isa(), &generic::isa()};
#else
    const Isa* all[] = {&generic::isa()};
#endif
    if (want && *want)
        for (const Isa* isa : all)
            if (!std::strcmp(isa->name, want) && supports(isa->name)) return *isa;
    for (const Isa* isa : all)
        if (supports(isa->name)) return *isa;
    return generic::isa();
}
}  // namespace

const Isa& select() {
    static const Isa& chosen = pick();
    return chosen;
}

}  // namespace rnnfast::cpu
