// Strict mode of simprune::linkage_cuda (the op: csrc/cuda/linkage.cpp): Z bitwise equal to
// scipy's linkage, ties included (linkage.md 7.4), by replaying scipy's own sequential procedures in
// ONE thread block -- the CUDA twin of kernels/linkage_strict.py (the reference design; same rules,
// same step structure):
//
// * complete / average / weighted / ward: nn_chain_strict_kernel replays scipy's nn_chain
//   (scipy/cluster/_hierarchy.pyx): a new chain starts at the lowest active slot; the top element's
//   row is scanned with the previous chain element as the initial candidate and a strict '<' (the
//   first minimal index wins; a tie with the previous element keeps it: chain_pick); two mutual
//   neighbours x < y merge into slot y (slot x dies); Lance-Williams (lance_williams<M>: scipy's
//   operation order, explicitly rounded intrinsics, never an FMA) rewrites row AND column y for
//   every other live slot, so the square matrix stays bit-symmetric.
// * single: mst_single_strict_kernel replays scipy's mst_single_linkage: Prim from point 0, the
//   tentative distance of every unmerged point lowered with `if D[i] > dist`, the next point the
//   first index of the minimal tentative distance (the previous y kept if nothing is finite).
//
// Each kernel is one launch of one block of kStrictThreads threads for the whole clustering: every
// thread runs the same scalar control flow (chain length, x, y, k), so every branch around a
// __syncthreads() is block-uniform. Row scans: each thread scans the columns tid, tid + T, ...
// (coalesced) with a strict '<' (its first minimal column), then warp shuffles and shared memory
// combine the partial minima with nn_better (smallest value, then smallest index): the first minimal
// index of the row, i.e. what scipy's sequential strict-'<' scan returns. The (value, index) pair
// travels together, so the chosen entry keeps its own value (-0.0 vs +0.0 as in scipy; cf.
// _first_min in the Triton file). NaN never wins a comparison, in scipy or here.
//
// Barriers: a store by one thread that another thread reads later (chain entries, sizes, the rows
// and columns rewritten by Lance-Williams, merged[]) is separated from that read by __syncthreads(),
// and so is every read from a store that overwrites the value read (sizes of the merged pair).
//
// Host: the merge log (slot x, slot y, height) in discovery order goes to the host, is stably sorted
// by the TRUE height (no monotone guard: strict = scipy; NaN last, as numpy's argsort) and relabelled
// with scipy's label() (linkage_common.h). Memory: 8 n^2 bytes (the square fp64 matrix) plus O(n).
// Cost: about 3n (nn_chain) or n - 1 (Prim) sequential O(n) steps on one SM: latency-bound, for
// bitwise reproducibility of scipy, not speed (mode="exact" is the fast path).
//
// SIMPRUNE_STRICT_DEVICE_ONLY (tests/test_linkage_strict_cuda.py): compiles the kernels alone, with
// no torch headers, for a PTX inspection (no fma.rn.f64).
#ifndef SIMPRUNE_STRICT_DEVICE_ONLY
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "linkage_cuda.h"
#include "simprune/host_common.h"
#endif

#include <cmath>
#include <cstdint>

#include "linkage_device.cuh"
#include "simprune/linkage_common.h"

namespace simprune {
namespace linkage {
namespace strict {

#ifndef SIMPRUNE_HOST_HARNESS_STRICT_THREADS  // csrc/harness: a smaller block of host threads
#define SIMPRUNE_HOST_HARNESS_STRICT_THREADS 512
#endif
constexpr int kStrictThreads = SIMPRUNE_HOST_HARNESS_STRICT_THREADS;  // one block of 16 warps
constexpr int kStrictWarps = kStrictThreads / 32;

struct alignas(16) Scratch {
  double v[kStrictWarps];
  int64_t i[kStrictWarps];
};

// The block's first minimal (value, index) of the threads' partial minima (v, i), returned to every
// thread: warp butterfly, then each thread combines the warps' results in warp order. nn_better is a
// total order on distinct entries (value, then index; NaN never enters), so the order of combination
// does not matter and every thread gets the same pair. Contains two __syncthreads(): call it from
// block-uniform control flow only.
__device__ inline void block_first_min(double* v, int64_t* i, Scratch& sh) {
  double bv = *v;
  int64_t bi = *i;
  warp_first_min(&bv, &bi);
  if ((threadIdx.x & 31) == 0) {
    sh.v[threadIdx.x >> 5] = bv;
    sh.i[threadIdx.x >> 5] = bi;
  }
  __syncthreads();
  bv = sh.v[0];
  bi = sh.i[0];
  for (int w = 1; w < kStrictWarps; ++w) {
    if (nn_better(sh.v[w], sh.i[w], bv, bi)) {
      bv = sh.v[w];
      bi = sh.i[w];
    }
  }
  __syncthreads();  // every thread has read sh before the next call overwrites it
  *v = bv;
  *i = bi;
}

// scipy's nn_chain on the square fp64 matrix S (n x n, bit-symmetric, +inf diagonal). size: int64
// (n,), all ones on entry (0 marks a dead slot, as in scipy); chain: int64 (n,) scratch; log: fp64
// (n - 1, 3) out, (x, y, height) per merge in discovery order, x < y.
template <int M>
__global__ void __launch_bounds__(kStrictThreads, 1)
    nn_chain_strict_kernel(double* S, int64_t* size, int64_t* chain, double* log, int64_t n) {
  __shared__ Scratch sh;
  const int64_t tid = threadIdx.x;
  int64_t k = 0, chain_len = 0;
  int64_t y = 0;       // scipy's y keeps its value across steps (matters only without finite values)
  int64_t lowest = 0;  // slots below it are dead; slots never revive, so it only moves up
  while (k < n - 1) {
    int64_t x;
    if (chain_len == 0) {
      // A new chain starts at the lowest active slot (sizes published by the last step's barrier).
      while (size[lowest] == 0) ++lowest;
      x = lowest;
      if (tid == 0) chain[0] = x;  // read by later steps, after this step's final barrier
      chain_len = 1;
    } else {
      x = chain[chain_len - 1];
    }
    const bool has_prev = chain_len > 1;
    const int64_t prev = has_prev ? chain[chain_len - 2] : -1;
    const double d_prev = has_prev ? S[x * n + prev] : 0.0;
    // Row scan of x over the live slots: the thread's first minimal column, strict '<' ...
    const double* row = S + x * n;
    double bv = INFINITY;
    int64_t bi = INT64_MAX;
    for (int64_t c = tid; c < n; c += kStrictThreads) {
      if (size[c] == 0 || c == x) continue;
      const double v = row[c];
      if (v < bv) {
        bv = v;
        bi = c;
      }
    }
    // ... then the row's first minimal (value, index); the previous element is the initial
    // candidate, and only a strictly smaller value replaces it.
    block_first_min(&bv, &bi, sh);
    double cur;
    chain_pick(has_prev, prev, d_prev, bv, bi, &y, &cur);
    if (has_prev && y == prev) {
      // ---- x and y are mutual nearest neighbours: merge them into the larger slot.
      chain_len -= 2;
      const int64_t mx = x < y ? x : y;
      const int64_t my = x < y ? y : x;
      const int64_t nx = size[mx];
      const int64_t ny = size[my];
      if (tid == 0) {
        log[3 * k + 0] = static_cast<double>(mx);
        log[3 * k + 1] = static_cast<double>(my);
        log[3 * k + 2] = cur;
      }
      // Every thread has read size[mx], size[my] (and, in the scan, size[c]) before one thread
      // overwrites them ...
      __syncthreads();
      if (tid == 0) {
        size[mx] = 0;
        size[my] = nx + ny;
      }
      // ... and the new sizes are visible to every thread before the update reads them.
      __syncthreads();
      const double* rx = S + mx * n;
      double* ry = S + my * n;
      for (int64_t c = tid; c < n; c += kStrictThreads) {
        const int64_t ni = size[c];
        if (ni == 0 || c == my) continue;
        // Row my is read and written by the same thread (column c); column my (row c, c live,
        // c != mx, my) is read by no thread in this loop.
        const double v = lance_williams<M>(rx[c], ry[c], cur, nx, ny, ni);
        ry[c] = v;
        S[c * n + my] = v;
      }
      ++k;
    } else {
      if (tid == 0) chain[chain_len] = y;  // no thread reads this entry in this step
      ++chain_len;
    }
    // The next step reads chain entries, sizes and rows (column my included) written above.
    __syncthreads();
  }
}

// scipy's mst_single_linkage (Prim from point 0) on the square fp64 matrix S. dmin: fp64 (n,), +inf
// on entry (tentative distances; entry c is read and written by thread c % kStrictThreads only);
// merged: int32 (n,), zeros on entry; log: fp64 (n - 1, 3) out, (x, y, height) per step.
__global__ void __launch_bounds__(kStrictThreads, 1)
    mst_single_strict_kernel(const double* S, double* dmin, int32_t* merged, double* log,
                             int64_t n) {
  __shared__ Scratch sh;
  const int64_t tid = threadIdx.x;
  int64_t x = 0;
  int64_t y = 0;  // scipy keeps the previous y when nothing is below +inf (infinite input only)
  for (int64_t k = 0; k < n - 1; ++k) {
    // The previous scan's reads of merged[] all precede this store (block_first_min's barriers).
    if (tid == 0) merged[x] = 1;
    __syncthreads();  // merged[x] is read by its owner thread in the scan
    const double* row = S + x * n;
    double bv = INFINITY;
    int64_t bi = INT64_MAX;
    for (int64_t c = tid; c < n; c += kStrictThreads) {
      if (merged[c] != 0) continue;
      const double dist = row[c];
      double dm = dmin[c];
      if (dm > dist) {  // scipy: if D[i] > dist: D[i] = dist
        dm = dist;
        dmin[c] = dm;
      }
      if (dm < bv) {  // scipy: if D[i] < current_min (the first index wins ties)
        bv = dm;
        bi = c;
      }
    }
    block_first_min(&bv, &bi, sh);  // scipy's current_min is D[y] itself
    if (bv < INFINITY) y = bi;
    if (tid == 0) {
      log[3 * k + 0] = static_cast<double>(x);
      log[3 * k + 1] = static_cast<double>(y);
      log[3 * k + 2] = bv;
    }
    x = y;
  }
}

#ifdef SIMPRUNE_STRICT_DEVICE_ONLY
// Every kernel the host code below launches, for the PTX inspection.
template __global__ void nn_chain_strict_kernel<kComplete>(double*, int64_t*, int64_t*, double*,
                                                           int64_t);
template __global__ void nn_chain_strict_kernel<kAverage>(double*, int64_t*, int64_t*, double*,
                                                          int64_t);
template __global__ void nn_chain_strict_kernel<kWeighted>(double*, int64_t*, int64_t*, double*,
                                                           int64_t);
template __global__ void nn_chain_strict_kernel<kWard>(double*, int64_t*, int64_t*, double*,
                                                       int64_t);
#endif

}  // namespace strict

#ifdef SIMPRUNE_STRICT_DEVICE_ONLY
// The square-matrix kernels (linkage_device.cuh) for both input types, as launch_square runs them.
namespace {
template __global__ void square_kernel<float, double>(const float*, double*, int64_t);
template __global__ void square_kernel<double, double>(const double*, double*, int64_t);
}  // namespace
#endif

#ifndef SIMPRUNE_STRICT_DEVICE_ONLY
// ---- host side ---------------------------------------------------------------------------------------
int64_t strict_bytes_needed(int64_t n) {
  // Matrix, merge log (3 doubles per merge), two O(n) vectors of 8 bytes (size + chain, or
  // dmin + merged), slack for the allocator's rounding.
  return 8 * n * n + 24 * std::max<int64_t>(n - 1, 1) + 16 * n + 1024;
}

at::Tensor linkage_strict_cuda(const at::Tensor& d, int method, int64_t n, const char* op) {
  TORCH_CHECK(d.is_cuda() && d.is_contiguous() && d.dim() == 1 && d.numel() == n * (n - 1) / 2 &&
                  n >= 2,
              op, ": internal error: linkage_strict_cuda expects a checked condensed vector");
  TORCH_CHECK(method == kSingle || method == kComplete || method == kAverage ||
                  method == kWeighted || method == kWard,
              op, ": internal error: strict mode got method code ", method);
  const c10::cuda::CUDAGuard guard(d.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto f64 = d.options().dtype(at::kDouble);
  TORCH_CHECK(d.scalar_type() == at::kDouble || d.scalar_type() == at::kFloat, op,
              ": distances must be float32 or float64");
  at::Tensor S = at::empty({n * n}, f64);
  launch_square(d.data_ptr(), d.scalar_type() == at::kDouble, 0, S.data_ptr<double>(), n, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor log = at::empty({n - 1, 3}, f64);
  double* s = S.data_ptr<double>();
  double* lg = log.data_ptr<double>();
  constexpr int T = strict::kStrictThreads;
  if (method == kSingle) {
    at::Tensor dmin = at::full({n}, std::numeric_limits<double>::infinity(), f64);
    at::Tensor merged = at::zeros({n}, d.options().dtype(at::kInt));
    strict::mst_single_strict_kernel<<<1, T, 0, stream>>>(s, dmin.data_ptr<double>(),
                                                          merged.data_ptr<int32_t>(), lg, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const auto i64 = d.options().dtype(at::kLong);
    at::Tensor size = at::ones({n}, i64);
    at::Tensor chain = at::empty({n}, i64);
    int64_t* sz = size.data_ptr<int64_t>();
    int64_t* ch = chain.data_ptr<int64_t>();
    with_reducible_method(method, [&](auto m) {
      constexpr int M = decltype(m)::value;
      if constexpr (M != kSingle) {
        strict::nn_chain_strict_kernel<M><<<1, T, 0, stream>>>(s, sz, ch, lg, n);
      }
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // scipy: argsort(Z[:, 2], kind='mergesort') on the true heights (stable; NaN last, as numpy's
  // order -- NaN heights only arise from non-Euclidean input to ward), then label().
  const at::Tensor log_h = log.cpu();  // synchronises with the kernel
  const at::Tensor heights = log_h.select(1, 2).contiguous();
  at::Tensor Z = at::empty({n - 1, 4}, at::TensorOptions().dtype(at::kDouble));
  sort_and_label(log_h.data_ptr<double>(), 3, heights.data_ptr<double>(), n, Z.data_ptr<double>());
  return Z.to(d.device());
}
#endif  // SIMPRUNE_STRICT_DEVICE_ONLY

}  // namespace linkage
}  // namespace simprune
