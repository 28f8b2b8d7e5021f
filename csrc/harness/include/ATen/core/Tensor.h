// Stand-in for the torch header of the same name in the host-thread harness build (csrc/harness):
// csrc/cuda/linkage_cuda.h declares (never defines) functions on these types.
#pragma once

#include <cstdint>

namespace c10 {
template <typename T>
class ArrayRef;
}  // namespace c10
namespace at {
class Tensor;
using IntArrayRef = c10::ArrayRef<int64_t>;
}  // namespace at
