// The avx512 library of the CPU kernels (see kernels_isa.h); its compiler flags are set in CMakeLists.txt.
#define RNNFAST_VBYTES 64
#define RNNFAST_ISA_NAME "avx512"
#include "kernels_isa.h"
