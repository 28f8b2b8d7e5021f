// Stand-in for csrc/include/simprune/host_common.h in the host-thread harness build (csrc/harness;
// found first on the include path): the real header needs ATen. Only sort_and_label, the finish of
// every linkage implementation, is needed here: a copy of the real one (same stable order, NaN keys
// last, then linkage_common.h's label()). tests/test_concurrency_harness.py compares the harness's Z
// with the CPU twin's bit for bit, so a drift between the two copies would fail there.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "simprune/linkage_common.h"

namespace simprune {
namespace linkage {

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
