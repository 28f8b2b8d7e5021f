// The first minimal (value, index) across a warp: a butterfly of shuffles combined with nn_better
// (smallest value, then smallest index; NaN never wins), so every lane ends with the same pair --
// the warp's share of a row argmin with scipy's "first index wins" rule. Device code only; the full
// warp must be converged (mask 0xffffffff).
#pragma once

#include <cstdint>

#include "simprune/linkage_common.h"

namespace simprune {
namespace linkage {

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

}  // namespace linkage
}  // namespace simprune
