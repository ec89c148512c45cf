// The avx2 build of the CPU kernels (see kernels_isa.h); compiler flags are set in CMakeLists.txt.
#define RNNFAST_VBYTES 32
#define RNNFAST_ISA_NS avx2
#define RNNFAST_ISA_NAME "avx2"
#include "kernels_isa.h"
