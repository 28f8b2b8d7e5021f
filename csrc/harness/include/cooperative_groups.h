// Stand-in for CUDA's <cooperative_groups.h> in the host-thread harness build (csrc/harness):
// grid.sync() is a barrier over every thread of a cooperative launch (cuda_host_shim.h).
#pragma once

#include "../cuda_host_shim.h"
