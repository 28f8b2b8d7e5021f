// Device helpers shared by the CUDA linkage kernels: the round-synchronous rounds
// (linkage_rounds.cu), Boruvka (linkage_boruvka.cu) and strict mode (linkage_strict.cu).
//
// * warp_first_min: a warp's first minimal (value, index), scipy's "first index wins" rule;
// * block_exclusive_scan: a block-wide exclusive scan of 0/1 flags (pair lists, compaction, edges);
// * square_kernel / launch_square: the condensed vector -> the square matrix every algorithm works on.
//
// Device code and plain CUDA host launches only (no torch headers): linkage_strict.cu is also
// compiled alone for a PTX inspection (SIMPRUNE_STRICT_DEVICE_ONLY). Everything here has internal
// linkage (an unnamed namespace): each .cu gets its own copy of the kernels it instantiates.
#pragma once

#include <cstdint>

#include "simprune/linkage_common.h"

namespace simprune {
namespace linkage {
namespace {

#ifndef SIMPRUNE_HOST_HARNESS_THREADS  // csrc/harness runs smaller blocks as host threads
#define SIMPRUNE_HOST_HARNESS_THREADS 512
#endif
// Threads per block of the rounds and Boruvka kernels (16 warps).
constexpr int kThreads = SIMPRUNE_HOST_HARNESS_THREADS;
constexpr int kWarps = kThreads / 32;

// The first minimal (value, index) across a warp: a butterfly of shuffles combined with nn_better
// (smallest value, then smallest index; NaN never wins), so every lane ends with the same pair --
// the warp's share of a row argmin. The full warp must be converged (mask 0xffffffff).
__device__ inline void warp_first_min(double* v, int64_t* i) {
  double bv = *v;
  int64_t bi = *i;
  for (int o = 16; o > 0; o >>= 1) {
    const double ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (nn_better(ov, oi, bv, bi)) {
      bv = ov;
      bi = oi;
    }
  }
  *v = bv;
  *i = bi;
}

// Block-wide exclusive scan of 0/1 flags over a block of kThreads threads: returns this thread's
// offset and writes the block total. warp_sums: shared memory of kWarps + 1 entries. Contains
// __syncthreads(): call it from block-uniform control flow only.
__device__ inline int64_t block_exclusive_scan(int flag, int64_t* total, int64_t* warp_sums) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  const int in_warp = __popc(ballot & ((1u << lane) - 1u));
  if (lane == 0) warp_sums[warp] = __popc(ballot);
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t acc = 0;
    for (int w = 0; w < kWarps; ++w) {
      const int64_t v = warp_sums[w];
      warp_sums[w] = acc;
      acc += v;
    }
    warp_sums[kWarps] = acc;
  }
  __syncthreads();
  const int64_t off = warp_sums[warp] + in_warp;
  *total = warp_sums[kWarps];
  __syncthreads();  // warp_sums is reused by the next call
  return off;
}

// Condensed (scipy pdist order) -> square matrix of the storage type T, +inf diagonal; (r, c) and
// (c, r) read the same element, so the matrix is bit-symmetric (float32 input into a float64 matrix
// is widened exactly, as scipy does).
template <typename Tin, typename T>
__global__ void square_kernel(const Tin* __restrict__ d, T* __restrict__ S, int64_t n) {
  const int64_t total = n * n;
  for (int64_t t = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = t / n, c = t - r * n;
    if (r == c) {
      S[t] = static_cast<T>(INFINITY);
    } else {
      const int64_t lo = r < c ? r : c, hi = r < c ? c : r;
      S[t] = static_cast<T>(d[row_offset(n, lo) + hi]);
    }
  }
}

#ifndef SIMPRUNE_HOST_HARNESS  // csrc/harness launches square_kernel itself
// Launches square_kernel on the condensed vector starting at element `offset` of `d` (float64 when
// d_double, else float32). The caller checks the launch (C10_CUDA_KERNEL_LAUNCH_CHECK).
template <typename T>
inline void launch_square(const void* d, bool d_double, int64_t offset, T* S, int64_t n,
                          cudaStream_t stream) {
  const int64_t want = (n * n + 255) / 256, most = int64_t{65535} * 8;
  const unsigned blocks = static_cast<unsigned>(want < most ? want : most);
  if (d_double) {
    const double* src = static_cast<const double*>(d) + offset;
    square_kernel<double, T><<<blocks, 256, 0, stream>>>(src, S, n);
  } else {
    const float* src = static_cast<const float*>(d) + offset;
    square_kernel<float, T><<<blocks, 256, 0, stream>>>(src, S, n);
  }
}
#endif  // SIMPRUNE_HOST_HARNESS

}  // namespace
}  // namespace linkage
}  // namespace simprune
