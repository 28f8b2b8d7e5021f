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

// Squared distances of one kTile x kTile tile into acc (fp64), by kChunk-feature chunks. x and y
// chunks are staged transposed (feature-major, zero-padded), then 4 rows x 16 columns of fp32/fp64
// partial sums live in vector registers while the chunk's features stream past, in feature order.
template <typename T>
inline void tile_sq(const T* x, const T* y, int64_t d, int64_t r0, int64_t c0, int64_t nr,
                    int64_t nc, double (*acc)[kTile]) {
  constexpr int kR = 4, kC = 16;
  alignas(64) T xt[kChunk][kTile];
  alignas(64) T yt[kChunk][kTile];
  for (int64_t r = 0; r < kTile; ++r)
    for (int64_t c = 0; c < kTile; ++c) acc[r][c] = 0.0;
  for (int64_t k0 = 0; k0 < d; k0 += kChunk) {
    const int64_t kc = std::min<int64_t>(kChunk, d - k0);
    for (int64_t k = 0; k < kc; ++k) {
      for (int64_t r = 0; r < kTile; ++r) xt[k][r] = r < nr ? x[(r0 + r) * d + k0 + k] : T(0);
      for (int64_t c = 0; c < kTile; ++c) yt[k][c] = c < nc ? y[(c0 + c) * d + k0 + k] : T(0);
    }
    for (int64_t r = 0; r < nr; r += kR) {
      for (int64_t cb = 0; cb < kTile; cb += kC) {
        T part[kR][kC];
        for (int i = 0; i < kR; ++i)
          for (int j = 0; j < kC; ++j) part[i][j] = T(0);
        for (int64_t k = 0; k < kc; ++k) {
          for (int i = 0; i < kR; ++i) {
            const T xv = xt[k][r + i];
#pragma omp simd
            for (int j = 0; j < kC; ++j) add_sq_diff<T>(xv, yt[k][cb + j], &part[i][j]);
          }
        }
        for (int i = 0; i < kR; ++i)
          for (int j = 0; j < kC; ++j) acc[r + i][cb + j] += static_cast<double>(part[i][j]);
      }
    }
  }
}

// The hot loop, cloned for AVX2 (picked at load time when the CPU has it) and the baseline ISA; the
// build's flags stay portable. No FMA in either clone: each square is rounded before it is added, as
// on the GPU (--fmad=false).
__attribute__((target_clones("avx2", "default"))) void tile_sq_f32(const float* x, const float* y,
                                                                   int64_t d, int64_t r0, int64_t c0,
                                                                   int64_t nr, int64_t nc,
                                                                   double (*acc)[kTile]) {
  tile_sq<float>(x, y, d, r0, c0, nr, nc, acc);
}

__attribute__((target_clones("avx2", "default"))) void tile_sq_f64(const double* x,
                                                                   const double* y, int64_t d,
                                                                   int64_t r0, int64_t c0,
                                                                   int64_t nr, int64_t nc,
                                                                   double (*acc)[kTile]) {
  tile_sq<double>(x, y, d, r0, c0, nr, nc, acc);
}

inline void tile_sq_any(const float* x, const float* y, int64_t d, int64_t r0, int64_t c0,
                        int64_t nr, int64_t nc, double (*acc)[kTile]) {
  tile_sq_f32(x, y, d, r0, c0, nr, nc, acc);
}
inline void tile_sq_any(const double* x, const double* y, int64_t d, int64_t r0, int64_t c0,
                        int64_t nr, int64_t nc, double (*acc)[kTile]) {
  tile_sq_f64(x, y, d, r0, c0, nr, nc, acc);
}

template <typename T, typename O>
void run_cpu(const Plan& p, O* out) {
  const T* x = p.x.data_ptr<T>();
  const T* y = p.y.data_ptr<T>();
  const int64_t n = p.n, m = p.m, d = p.d, ld = p.m;
  const int64_t tn = (n + kTile - 1) / kTile, tm = (m + kTile - 1) / kTile;
  const int64_t tiles = p.sym ? tri_count(tn) : tn * tm;
#pragma omp parallel
  {
    alignas(64) double acc[kTile + 4][kTile];  // +4 rows: the 4-row blocks may run past nr
    alignas(64) O val[kTile][kTile];
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
      tile_sq_any(x, y, d, r0, c0, nr, nc, acc);
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t c = 0; c < nc; ++c) val[r][c] = static_cast<O>(finish<double>(acc[r][c], p.metric));
      // Epilogue: row segments, contiguous in memory (same destinations as distance_common.h's
      // destinations(), written segment-wise for the CPU's caches).
      if (!p.sym) {
        for (int64_t r = 0; r < nr; ++r)
          std::copy(val[r], val[r] + nc, out + (r0 + r) * ld + c0);
        continue;
      }
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t gr = r0 + r;
        const int64_t cs = std::max<int64_t>(0, gr + 1 - c0);  // first column with gc > gr
        if (p.condensed) {
          if (cs < nc) std::copy(val[r] + cs, val[r] + nc, out + condensed_index(n, gr, c0 + cs));
        } else {
          if (cs < nc) std::copy(val[r] + cs, val[r] + nc, out + gr * ld + c0 + cs);
          if (gr >= c0 && gr < c0 + nc) out[gr * ld + gr] = O(0);  // exact zero diagonal
        }
      }
      if (!p.condensed) {
        // Mirror: column c of the tile becomes a contiguous row segment of the output.
        for (int64_t c = 0; c < nc; ++c) {
          const int64_t gc = c0 + c;
          const int64_t re = std::min<int64_t>(nr, gc - r0);  // rows with gr < gc
          O* dst = out + gc * ld + r0;
          for (int64_t r = 0; r < re; ++r) dst[r] = val[r][c];
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
