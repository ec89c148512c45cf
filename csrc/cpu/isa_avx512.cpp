// The avx512 build of the CPU kernels (see kernels_isa.h); compiler flags are set in CMakeLists.txt.
#define RNNFAST_VBYTES 64
#define RNNFAST_ISA_NS avx512
#define RNNFAST_ISA_NAME "avx512"
#include "kernels_isa.h"
