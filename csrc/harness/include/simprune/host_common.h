// Stand-in for csrc/include/simprune/host_common.h in the host-thread harness build (csrc/harness;
// found first on the include path): the real header needs ATen. Only sort_and_label, the finish of
// every linkage implementation, is needed here: the same definition as the real header's
// (simprune/linkage_finish.h, shared).
#pragma once

#include "simprune/linkage_finish.h"
