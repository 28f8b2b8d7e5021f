// The CUDA linkage algorithms behind the ops of csrc/cuda/linkage.cpp (simprune::linkage_cuda,
// linkage_rounds_cuda, linkage_batched_cuda), one source file each:
//
// * linkage_rounds.cu  -- round-synchronous reciprocal-nearest-neighbour merging (linkage.md 7.3),
//                         one persistent cooperative kernel; and the batched form (linkage.md 7.5),
//                         one block per problem, all problems in one launch;
// * linkage_boruvka.cu -- single linkage as a Boruvka MST;
// * linkage_strict.cu  -- strict mode: scipy's nn_chain / Prim replayed in one thread block (7.4).
//
// The ops check everything before calling these (form, device, memory, values): the inputs here
// are contiguous condensed vectors (float32 or float64, scipy's pdist order) on the current CUDA
// device, finite and non-negative, with n >= 2 observations. Host declarations only (ATen types).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <tuple>

namespace simprune {
namespace linkage {

// ---- linkage_rounds.cu
// Device bytes one problem of the rounds needs: both matrix buffers (elem bytes per entry: 8 for
// float64 storage, 4 for float32) and the O(n) arrays.
int64_t rounds_bytes_needed(int64_t n, int64_t elem);

// The rounds on one problem; method: kSingle .. kWard (linkage_common.h); fp32: float32 storage.
// Returns (Z float64 (n - 1, 4), stats int64 (3,) = rounds, compactions, most merges in one round),
// both on d's device.
std::tuple<at::Tensor, at::Tensor> rounds_cuda(const at::Tensor& d, int method, int64_t n,
                                               bool fp32, const char* op);

// Many problems (sizes[g] observations each, every one >= 1) packed back to back in d, float64
// storage, one block each in one launch. Returns the concatenation of their Z matrices (float64,
// (sum(sizes[g] - 1), 4)) on d's device.
at::Tensor rounds_batched_cuda(const at::Tensor& d, at::IntArrayRef sizes, int method,
                               const char* op);

// ---- linkage_boruvka.cu
int64_t boruvka_bytes_needed(int64_t n, int64_t elem);

// Single linkage. Returns (Z, stats = iterations, 0, most edges in one iteration) on d's device.
std::tuple<at::Tensor, at::Tensor> boruvka_cuda(const at::Tensor& d, int64_t n, bool fp32,
                                                const char* op);

// ---- linkage_strict.cu
// The n x n float64 matrix plus O(n) vectors.
int64_t strict_bytes_needed(int64_t n);

// Z bitwise equal to scipy's linkage, ties included; float64 Z (n - 1, 4) on d's device.
at::Tensor linkage_strict_cuda(const at::Tensor& d, int method, int64_t n, const char* op);

}  // namespace linkage
}  // namespace simprune
