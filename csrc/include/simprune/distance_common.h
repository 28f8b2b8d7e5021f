// Per-element and per-tile arithmetic of the pairwise-distance kernels, shared by the C++ CPU kernel
// (csrc/cpu/distance.cpp) and the CUDA kernel (csrc/cuda/distance.cu): one arithmetic, two backends,
// so the CPU tests exercise exactly what the GPU runs. Plain C++17, no library calls beyond sqrt.
//
// Numerics (why direct differences): the expansion |x|^2 + |y|^2 - 2 x.y cancels for near-duplicate
// rows (linkage.md 4.5: up to 15 % error in fp32), exactly the pairs pruning acts on. These kernels sum
// (x_k - y_k)^2 directly: the difference of two close fp32 values is exact (Sterbenz), each square is
// rounded once, and the squares are summed in fp32 over a chunk of kChunk features, then the chunk sums
// in fp64. Relative error <= (kChunk + 2) * 2^-24 ~ 1.1e-6 in the worst case (all rounding errors
// aligned), ~1e-7 in practice, for any d. fp64 inputs compute in fp64 throughout.
#pragma once

#include <cmath>
#include <cstdint>

#include "simprune/host_device.h"

namespace simprune {
namespace distance {

// Metric codes (scipy's names; shared with kernels/distance.py METRIC_CODE).
enum Metric : int { kSqEuclidean = 0, kEuclidean = 1, kCosine = 2 };

// Square tile edge and feature chunk of both compiled kernels.
constexpr int kTile = 64;
constexpr int kChunk = 16;

// Metric epilogue on a squared distance: clamp >= 0, then sqrt (euclidean) or / 2 (cosine on
// pre-normalised rows: 1 - cos = |x^ - y^|^2 / 2, no cancellation near cos = 1).
template <typename T>
SIMPRUNE_HD inline T finish(T sq, int metric) {
  sq = sq > T(0) ? sq : T(0);
  if (metric == kEuclidean) return std::sqrt(sq);
  if (metric == kCosine) return sq * T(0.5);
  return sq;
}

// Index of pair (i, j), i < j, in scipy's condensed (pdist) order. int64: n(n-1)/2 overflows int32
// above n = 65,536.
SIMPRUNE_HD inline int64_t condensed_index(int64_t n, int64_t i, int64_t j) {
  return i * n - i * (i + 1) / 2 + (j - i - 1);
}

// Number of upper-triangle tiles (ti <= tj) of a t x t tile grid.
SIMPRUNE_HD inline int64_t tri_count(int64_t t) { return t * (t + 1) / 2; }

// Linear tile index p -> (ti, tj), ti <= tj, column by column: (0,0), (0,1), (1,1), (0,2), ...
// The fp64 sqrt is exact enough for p < 2^50; the two corrections make it exact regardless.
SIMPRUNE_HD inline void tri_tile(int64_t p, int64_t* ti, int64_t* tj) {
  int64_t j = static_cast<int64_t>((std::sqrt(8.0 * static_cast<double>(p) + 1.0) - 1.0) * 0.5);
  if (j * (j + 1) / 2 > p) --j;
  if ((j + 1) * (j + 2) / 2 <= p) ++j;
  *tj = j;
  *ti = p - j * (j + 1) / 2;
}

// Chunk accumulator type: fp32 inputs sum squares in fp32 within a chunk, fp64 inputs in fp64.
template <typename T>
struct Acc {
  using chunk = T;
};

// One feature's contribution to a chunk partial sum: exact difference, one rounding for the square.
template <typename T>
SIMPRUNE_HD inline void add_sq_diff(T a, T b, typename Acc<T>::chunk* part) {
  const T d = a - b;
  *part += d * d;
}

// Where a tile entry (r, c) goes. Returns the number of destinations (0, 1 or 2) written to dst.
// sym: x with itself (entries with r < c kept and mirrored; r == c is the exact-zero diagonal, handled
// by the caller). ld: leading dimension of a square output.
SIMPRUNE_HD inline int destinations(int64_t r, int64_t c, int64_t n, int64_t m, int64_t ld, bool sym,
                                    bool condensed, int64_t dst[2]) {
  if (!sym) {
    if (r >= n || c >= m) return 0;
    dst[0] = r * ld + c;
    return 1;
  }
  if (!(r < c && c < n)) return 0;
  if (condensed) {
    dst[0] = condensed_index(n, r, c);
    return 1;
  }
  dst[0] = r * ld + c;
  dst[1] = c * ld + r;
  return 2;
}

}  // namespace distance
}  // namespace simprune
