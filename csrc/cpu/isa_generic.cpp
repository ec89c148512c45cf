// The generic library of the CPU kernels (see kernels_isa.h); its compiler flags are set in CMakeLists.txt.
#define RNNFAST_VBYTES 16
#define RNNFAST_ISA_NAME "generic"
#include "kernels_isa.h"
