// The avx2 library of the CPU kernels (see kernels_isa.h); its compiler flags are set in CMakeLists.txt.
#define RNNFAST_VBYTES 32
#define RNNFAST_ISA_NAME "avx2"
#include "kernels_isa.h"
