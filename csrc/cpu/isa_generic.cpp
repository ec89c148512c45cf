// The generic build of the CPU kernels (see kernels_isa.h); compiler flags are set in CMakeLists.txt.
#define RNNFAST_VBYTES 16
#define RNNFAST_ISA_NS generic
#define RNNFAST_ISA_NAME "generic"
#include "kernels_isa.h"
