// Stand-in for the torch header of the same name in the host-thread harness build (csrc/harness).
#pragma once

#include "ATen/core/Tensor.h"
