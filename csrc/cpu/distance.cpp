// simprune::pairwise_distance_cpu: tiled direct-difference distances on the CPU (OpenMP).
//
// Same tiles (kTile x kTile, upper triangle only when x is compared with itself, mirrored), same
// chunked accumulation and same epilogue as the CUDA kernel (simprune/distance_common.h), so CPU tests
// exercise the GPU's arithmetic. The inner loop runs over the kTile columns of a transposed y chunk, so
// it vectorises without reassociating any sum: each pair's squares are added in feature order.
#if __cplusplus >= 202002L  // torch >= 2.10 ATen headers need C++20

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "simprune/distance_common.h"
#include "simprune/distance_host.h"

namespace simprune {
namespace distance {
namespace {

template <typename T, typename O>
void run_cpu(const Plan& p, O* out) {
  const T* x = p.x.data_ptr<T>();
  const T* y = p.y.data_ptr<T>();
  const int64_t n = p.n, m = p.m, d = p.d, ld = p.m;
  const int64_t tn = (n + kTile - 1) / kTile, tm = (m + kTile - 1) / kTile;
  const int64_t tiles = p.sym ? tri_count(tn) : tn * tm;
#pragma omp parallel
  {
    alignas(64) double acc[kTile][kTile];
    alignas(64) T yt[kChunk][kTile];  // y chunk, transposed: features x columns
    alignas(64) T part[kTile];
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tiles; ++t) {
      int64_t ti, tj;
      if (p.sym) {
        tri_tile(t, &ti, &tj);
      } else {
        ti = t / tm;
        tj = t % tm;
      }
      const int64_t r0 = ti * kTile, c0 = tj * kTile;
      const int64_t nr = std::min<int64_t>(kTile, n - r0), nc = std::min<int64_t>(kTile, m - c0);
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t c = 0; c < kTile; ++c) acc[r][c] = 0.0;
      for (int64_t k0 = 0; k0 < d; k0 += kChunk) {
        const int64_t kc = std::min<int64_t>(kChunk, d - k0);
        for (int64_t k = 0; k < kc; ++k)
          for (int64_t c = 0; c < kTile; ++c) yt[k][c] = c < nc ? y[(c0 + c) * d + k0 + k] : T(0);
        for (int64_t r = 0; r < nr; ++r) {
          const T* xr = x + (r0 + r) * d + k0;
          for (int64_t c = 0; c < kTile; ++c) part[c] = T(0);
          for (int64_t k = 0; k < kc; ++k) {
            const T xv = xr[k];
#pragma omp simd
            for (int64_t c = 0; c < kTile; ++c) add_sq_diff<T>(xv, yt[k][c], &part[c]);
          }
          for (int64_t c = 0; c < kTile; ++c) acc[r][c] += static_cast<double>(part[c]);
        }
      }
      int64_t dst[2];
      for (int64_t r = 0; r < nr; ++r) {
        for (int64_t c = 0; c < nc; ++c) {
          const int64_t gr = r0 + r, gc = c0 + c;
          if (p.sym && gr == gc) {
            if (!p.condensed) out[gr * ld + gc] = O(0);  // exact zero diagonal
            continue;
          }
          const int k = destinations(gr, gc, n, m, ld, p.sym, p.condensed, dst);
          if (k == 0) continue;
          const O v = static_cast<O>(finish<double>(acc[r][c], p.metric));
          for (int q = 0; q < k; ++q) out[dst[q]] = v;
        }
      }
    }
  }
}

at::Tensor pairwise_distance_cpu(const at::Tensor& x, const std::optional<at::Tensor>& y,
                                 c10::string_view metric, bool condensed,
                                 std::optional<at::ScalarType> out_dtype,
                                 c10::string_view precision) {
  TORCH_CHECK(precision == "exact" || precision == "fast", "precision must be 'exact' or 'fast'");
  TORCH_CHECK(x.device().is_cpu(), "pairwise_distance_cpu needs CPU tensors");
  const Plan p = make_plan(x, y, metric, condensed, out_dtype);
  at::Tensor out = make_output(p, x.options());
  if (out.numel() == 0) return out;
  const bool c64 = p.cdt == at::kDouble, o64 = p.out_dtype == at::kDouble;
  if (c64 && o64) run_cpu<double, double>(p, out.data_ptr<double>());
  if (c64 && !o64) run_cpu<double, float>(p, out.data_ptr<float>());
  if (!c64 && o64) run_cpu<float, double>(p, out.data_ptr<double>());
  if (!c64 && !o64) run_cpu<float, float>(p, out.data_ptr<float>());
  return out;
}

}  // namespace
}  // namespace distance
}  // namespace simprune

TORCH_LIBRARY_IMPL(simprune, CPU, m) {
  m.impl("pairwise_distance_cpu", &simprune::distance::pairwise_distance_cpu);
}

#else
#pragma message("simprune: csrc/cpu/distance.cpp skipped: torch's headers need -std=c++20")
#endif
