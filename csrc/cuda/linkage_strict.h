// Strict mode of simprune::linkage_cuda (csrc/cuda/linkage_strict.cu): scipy's nn_chain and
// mst_single_linkage replayed in one thread block, Z bitwise equal to scipy's, ties included
// (linkage.md 7.4). Called by linkage_cuda (csrc/cuda/linkage.cu) for mode="strict".
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>

namespace simprune {
namespace linkage {

// Bytes the caching allocator can hand out on `dev` now: the device's free memory plus what the
// allocator holds but does not use. (Shared by the memory checks of linkage.cu and linkage_strict.cu.)
int64_t available_device_bytes(const at::Device& dev);

// Device bytes strict mode needs for n observations: the n x n float64 matrix plus O(n) vectors.
int64_t strict_bytes_needed(int64_t n);

// Refuses (torch.OutOfMemoryError, with the needed and free bytes) a problem whose strict-mode
// buffers do not fit in the free memory of `dev` (the current device). Call before any O(n^2)
// allocation, the values check included.
void check_memory_strict(int64_t n, const at::Device& dev, const char* op);

// The strict linkage of a condensed distance vector d (float32 or float64, contiguous, on the
// current CUDA device; already checked: length n(n-1)/2 with n >= 2, finite, non-negative).
// method: kSingle, kComplete, kAverage, kWeighted or kWard (linkage_common.h). Returns float64 Z
// (n - 1, 4) on d's device.
at::Tensor linkage_strict_cuda(const at::Tensor& d, int method, int64_t n, const char* op);

}  // namespace linkage
}  // namespace simprune
