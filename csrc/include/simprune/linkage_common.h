// Per-element arithmetic of hierarchical clustering, shared by the CPU (csrc/cpu/linkage*.cpp) and the
// CUDA linkage: one arithmetic, two backends. Everything here is plain C++17 with no library calls
// beyond sqrt, so nvcc can compile it for the device (SIMPRUNE_HD = __host__ __device__ under nvcc).
//
// Bitwise contract: every function below evaluates exactly the expression, in exactly the operation
// order, of scipy 1.17 (scipy/cluster/_hierarchy_distance_update.pxi, _hierarchy.pyx), with no fused
// multiply-add. On the device this is forced with the explicitly rounded intrinsics (__dmul_rn, ...),
// which nvcc never contracts, whatever --fmad says. On the host, GCC/Clang contract a*b+c into an FMA
// only when FMA instructions are enabled (-mfma, -march=haswell or later); the build does not enable
// them, and the #error below stops a build that would silently break the strict-mode guarantee.
#pragma once

#include <cmath>
#include <cstdint>

#include "simprune/host_device.h"

#if defined(__FMA__) && !defined(__CUDA_ARCH__) && !defined(SIMPRUNE_FP_CONTRACT_OFF)
#error "simprune linkage: FMA is enabled for host code (-mfma/-march); scipy-identical arithmetic " \
    "needs no contraction. Add -ffp-contract=off and define SIMPRUNE_FP_CONTRACT_OFF."
#endif

namespace simprune {
namespace linkage {

// Method codes (scipy's names; the numbering is simprune's own).
enum Method : int {
  kSingle = 0,
  kComplete = 1,
  kAverage = 2,
  kWeighted = 3,
  kWard = 4,
  kCentroid = 5,
  kMedian = 6,
};

// ---- correctly rounded, never-contracted double arithmetic ----------------------------------------
SIMPRUNE_HD inline double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
SIMPRUNE_HD inline double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
SIMPRUNE_HD inline double dsub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
SIMPRUNE_HD inline double ddiv(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
SIMPRUNE_HD inline double dsqrt(double a) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// ---- Lance-Williams updates -------------------------------------------------------------------------
// Distance from cluster i to the union of clusters x and y, given d(x,i), d(y,i), d(x,y) and the sizes.
// Sizes are integers as in scipy (int there; int64 here, identical once converted to double for
// n < 2^53). Cython's min/max return the first argument unless the second is strictly smaller/larger;
// that matters only for the sign of a zero, and is reproduced.
template <int M>
SIMPRUNE_HD inline double lance_williams(double d_xi, double d_yi, double d_xy, int64_t size_x,
                                         int64_t size_y, int64_t size_i) {
  if constexpr (M == kSingle) {
    return d_yi < d_xi ? d_yi : d_xi;
  } else if constexpr (M == kComplete) {
    return d_yi > d_xi ? d_yi : d_xi;
  } else if constexpr (M == kAverage) {
    // (size_x * d_xi + size_y * d_yi) / (size_x + size_y)
    return ddiv(dadd(dmul(static_cast<double>(size_x), d_xi), dmul(static_cast<double>(size_y), d_yi)),
                static_cast<double>(size_x + size_y));
  } else if constexpr (M == kWeighted) {
    // 0.5 * (d_xi + d_yi)
    return dmul(0.5, dadd(d_xi, d_yi));
  } else if constexpr (M == kWard) {
    // t = 1.0 / (size_x + size_y + size_i)
    // sqrt((size_i + size_x) * t * d_xi * d_xi + (size_i + size_y) * t * d_yi * d_yi
    //      - size_i * t * d_xy * d_xy), each product evaluated left to right.
    const double t = ddiv(1.0, static_cast<double>(size_x + size_y + size_i));
    const double a = dmul(dmul(dmul(static_cast<double>(size_i + size_x), t), d_xi), d_xi);
    const double b = dmul(dmul(dmul(static_cast<double>(size_i + size_y), t), d_yi), d_yi);
    const double c = dmul(dmul(dmul(static_cast<double>(size_i), t), d_xy), d_xy);
    return dsqrt(dsub(dadd(a, b), c));
  } else if constexpr (M == kCentroid) {
    // sqrt((((size_x * d_xi * d_xi) + (size_y * d_yi * d_yi)) -
    //       (size_x * size_y * d_xy * d_xy) / (size_x + size_y)) / (size_x + size_y))
    const double sxy = static_cast<double>(size_x + size_y);
    const double a = dmul(dmul(static_cast<double>(size_x), d_xi), d_xi);
    const double b = dmul(dmul(static_cast<double>(size_y), d_yi), d_yi);
    const double c = dmul(dmul(static_cast<double>(size_x * size_y), d_xy), d_xy);
    return dsqrt(ddiv(dsub(dadd(a, b), ddiv(c, sxy)), sxy));
  } else {
    static_assert(M == kMedian, "unknown linkage method");
    // sqrt(0.5 * (d_xi * d_xi + d_yi * d_yi) - 0.25 * d_xy * d_xy)
    const double s = dadd(dmul(d_xi, d_xi), dmul(d_yi, d_yi));
    return dsqrt(dsub(dmul(0.5, s), dmul(dmul(0.25, d_xy), d_xy)));
  }
}

// ---- the method as a compile-time constant ---------------------------------------------------
template <int M>
struct MethodTag {
  static constexpr int value = M;
};

// Calls f(MethodTag<M>{}) for the runtime code of a reducible method (kSingle .. kWard; any other
// code is taken as kWard: callers have parsed the method). The one switch from a method name's code
// to the kernels templated on it, on the CPU and the GPU alike.
SIMPRUNE_EXEC_CHECK_DISABLE
template <typename F>
SIMPRUNE_HD inline decltype(auto) with_reducible_method(int method, F&& f) {
  switch (method) {
    case kSingle:
      return f(MethodTag<kSingle>{});
    case kComplete:
      return f(MethodTag<kComplete>{});
    case kAverage:
      return f(MethodTag<kAverage>{});
    case kWeighted:
      return f(MethodTag<kWeighted>{});
    default:
      return f(MethodTag<kWard>{});
  }
}

// Runtime-dispatched form (for code that does not template on the method).
SIMPRUNE_HD inline double lance_williams(int method, double d_xi, double d_yi, double d_xy,
                                         int64_t size_x, int64_t size_y, int64_t size_i) {
  if (method == kCentroid) {
    return lance_williams<kCentroid>(d_xi, d_yi, d_xy, size_x, size_y, size_i);
  }
  if (method == kMedian) return lance_williams<kMedian>(d_xi, d_yi, d_xy, size_x, size_y, size_i);
  return with_reducible_method(method, [&](auto m) {
    return lance_williams<decltype(m)::value>(d_xi, d_yi, d_xy, size_x, size_y, size_i);
  });
}

// Phase 2 of a round (linkage.md section 7.3): the distance between two clusters P = ip + jp and
// Q = iq + jq formed in the same round, in one canonical order (merge P first, then Q), from the four
// old cross distances and the two merge heights. Both mirrored entries get this one value.
template <int M>
SIMPRUNE_HD inline double lance_williams_pair(double d_ip_iq, double d_jp_iq, double d_ip_jq,
                                              double d_jp_jq, double h_p, double h_q, int64_t n_ip,
                                              int64_t n_jp, int64_t n_iq, int64_t n_jq) {
  const double d_p_iq = lance_williams<M>(d_ip_iq, d_jp_iq, h_p, n_ip, n_jp, n_iq);
  const double d_p_jq = lance_williams<M>(d_ip_jq, d_jp_jq, h_p, n_ip, n_jp, n_jq);
  return lance_williams<M>(d_p_iq, d_p_jq, h_q, n_iq, n_jq, n_ip + n_jp);
}

// ---- nearest-neighbour tie rules ------------------------------------------------------------------
// Row argmin ("smallest slot wins ties"): candidate (v, i) beats (best_v, best_i) when it is smaller,
// or equal with a smaller index. A sequential scan in increasing index order with a strict '<' is the
// same rule, so partial minima of any partition combine with this into scipy's answer.
SIMPRUNE_HD inline bool nn_better(double v, int64_t i, double best_v, int64_t best_i) {
  return v < best_v || (v == best_v && i < best_i);
}

// scipy's nn_chain step: the previous chain element (if any) is the initial candidate and a strict '<'
// scan replaces it, so a tie with the previous element keeps the previous element (no cycles).
// (row_min, row_arg) is the row's argmin under nn_better over all active columns except x itself.
// y/current_min are updated in place; like scipy, y keeps its old value when nothing is below
// current_min (only possible with infinite distances, which the callers reject).
SIMPRUNE_HD inline void chain_pick(bool has_prev, int64_t prev, double d_prev, double row_min,
                                   int64_t row_arg, int64_t* y, double* current_min) {
  double cur = has_prev ? d_prev : INFINITY;
  if (has_prev) *y = prev;
  if (row_min < cur) {
    cur = row_min;
    *y = row_arg;
  }
  *current_min = cur;
}

// ---- monotone guard (sort key only) ---------------------------------------------------------------
// Effective height of a merge: at least its own height and its children's effective heights, so that a
// 1-ulp inversion cannot sort a parent before its child. child_eff < 0 marks a leaf.
SIMPRUNE_HD inline double effective_height(double h, double child_eff_a, double child_eff_b) {
  double e = h;
  if (child_eff_a > e) e = child_eff_a;
  if (child_eff_b > e) e = child_eff_b;
  return e;
}

// ---- relabel: scipy's label() -------------------------------------------------------------------------
// Z rows (stride 4) are sorted by height and hold representative leaves (any leaf of each cluster) in
// columns 0 and 1. Rewrites columns 0, 1 with the current cluster ids (min, max) and column 3 with the
// size, exactly as scipy's LinkageUnionFind. parent and size are scratch arrays of length 2n-1.
SIMPRUNE_HD inline int64_t uf_find(int64_t* parent, int64_t x) {
  int64_t root = x;
  while (parent[root] != root) root = parent[root];
  // Path compression, as scipy does it.
  while (parent[x] != root) {
    const int64_t next = parent[x];
    parent[x] = root;
    x = next;
  }
  return root;
}

SIMPRUNE_HD inline void label(double* Z, int64_t n, int64_t* parent, int64_t* size) {
  for (int64_t i = 0; i < 2 * n - 1; ++i) {
    parent[i] = i;
    size[i] = 1;
  }
  int64_t next_label = n;
  for (int64_t i = 0; i < n - 1; ++i) {
    const int64_t xr = uf_find(parent, static_cast<int64_t>(Z[4 * i + 0]));
    const int64_t yr = uf_find(parent, static_cast<int64_t>(Z[4 * i + 1]));
    Z[4 * i + 0] = static_cast<double>(xr < yr ? xr : yr);
    Z[4 * i + 1] = static_cast<double>(xr < yr ? yr : xr);
    parent[xr] = next_label;
    parent[yr] = next_label;
    size[next_label] = size[xr] + size[yr];
    Z[4 * i + 3] = static_cast<double>(size[next_label]);
    ++next_label;
  }
}

// Condensed index (scipy's pdist order) of the pair i < j: row_offset(n, i) + j.
SIMPRUNE_HD inline int64_t row_offset(int64_t n, int64_t i) { return n * i - i * (i + 1) / 2 - i - 1; }

}  // namespace linkage
}  // namespace simprune
