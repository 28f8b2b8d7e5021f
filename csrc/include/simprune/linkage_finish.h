// sort_and_label, the finish of every linkage implementation (CPU, CUDA, the host-thread harness):
// no ATen, so csrc/harness's stand-in for host_common.h includes this same definition.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "simprune/linkage_common.h"

namespace simprune {
namespace linkage {

// ---- the finish of every implementation ---------------------------------------------------------
// log: n - 1 merges, `stride` doubles each, starting (rep_a, rep_b, height); key: the sort key per
// merge (the true height for strict mode and single; the monotone-guarded height in exact mode).
// Writes Z (n - 1) x 4: rows in the stable order of the key -- numpy's argsort(kind="mergesort"),
// NaN keys last (NaN only arises from non-Euclidean input to ward) -- then label().
inline void sort_and_label(const double* log, int64_t stride, const double* key, int64_t n,
                           double* Z) {
  const int64_t m = n - 1;
  std::vector<int64_t> order(m);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return key[a] < key[b] || (!std::isnan(key[a]) && std::isnan(key[b]));
  });
  for (int64_t r = 0; r < m; ++r) {
    const double* row = log + stride * order[r];
    Z[4 * r + 0] = row[0];
    Z[4 * r + 1] = row[1];
    Z[4 * r + 2] = row[2];
    Z[4 * r + 3] = 0.0;
  }
  std::vector<int64_t> parent(2 * n - 1), size(2 * n - 1);
  label(Z, n, parent.data(), size.data());
}

}  // namespace linkage
}  // namespace simprune
