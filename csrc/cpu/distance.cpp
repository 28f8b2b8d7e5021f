// simprune::pairwise_distance_cpu: pairwise distances on the CPU (OpenMP), two paths:
//
// * d < 256: direct differences in tiles. Same tiles (kTile x kTile, upper triangle only when x is
//   compared with itself, mirrored), same chunked accumulation and same epilogue as the CUDA kernel
//   (simprune/distance_common.h), so CPU tests exercise the GPU's arithmetic. The inner loop runs over
//   the columns of a transposed y chunk, so it vectorises without reassociating any sum: each pair's
//   squares are added in feature order.
// * d >= 256: BLAS expansion on centred rows plus an exact repair of the near pairs (the algorithm of
//   the Triton kernel), see run_cpu_gemm.
// Both keep <= 1e-6 relative error in fp32 (<= 1e-12 for a float64 result) on near-duplicate rows, and
// beat the float64 reference (simprune.pairwise_distance_ref) at every size measured
// (benchmarks/results/distance_cpu.md).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <type_traits>

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

// ---------------------------------------------------------------------------------------------
// Large d: BLAS expansion on centred rows + exact repair of near pairs, fused into one epilogue.
// ---------------------------------------------------------------------------------------------
// The same algorithm as the Triton kernel (kernels/distance.py): centring in fp64, the Gram matrix by
// at::mm (fp32 SGEMM or fp64 DGEMM: CPU BLAS is several times faster than direct differences once d
// is large), then every pair whose expanded value is below ratio * (|x|^2 + |y|^2), where the
// expansion may have cancelled, is recomputed by direct differences of the original rows (the same
// add_sq_diff chunks as the direct kernel). ratio: 0.25 in fp32 (an emulation of IEEE fp32 GEMM
// rounding keeps the other pairs within 5e-7), 1e-2 in fp64.
constexpr int64_t kGemmMinDDefault = 256;  // measured crossover on the 2-core CPU machine

int64_t gemm_min_d() {
  // SIMPRUNE_CPU_GEMM_MIN_D overrides the crossover (benchmarks and tests of both paths).
  static const int64_t v = [] {
    const char* e = std::getenv("SIMPRUNE_CPU_GEMM_MIN_D");
    return e ? std::atoll(e) : kGemmMinDDefault;
  }();
  return v;
}

template <typename T>
double direct_sq(const T* a, const T* b, int64_t d) {
  double acc = 0.0;
  for (int64_t k0 = 0; k0 < d; k0 += kChunk) {
    const int64_t kc = std::min<int64_t>(kChunk, d - k0);
    T part = T(0);
    for (int64_t k = 0; k < kc; ++k) add_sq_diff<T>(a[k0 + k], b[k0 + k], &part);
    acc += static_cast<double>(part);
  }
  return acc;
}

template <typename T, typename O>
void run_cpu_gemm(const Plan& p, O* out) {
  const int64_t n = p.n, m = p.m, d = p.d, ld = p.m;
  const double ratio = std::is_same_v<T, double> ? 1e-2 : 0.25;
  const auto scalar = std::is_same_v<T, double> ? at::kDouble : at::kFloat;
  at::Tensor x64 = p.x.to(at::kDouble);
  at::Tensor y64 = p.sym ? x64 : p.y.to(at::kDouble);
  at::Tensor mu = p.sym ? x64.mean(0) : at::cat({x64, y64}).mean(0);
  at::Tensor xc = x64 - mu;
  at::Tensor yc = p.sym ? xc : y64 - mu;
  at::Tensor nx = (xc * xc).sum(1).contiguous();
  at::Tensor ny = p.sym ? nx : (yc * yc).sum(1).contiguous();
  at::Tensor xt = xc.to(scalar).contiguous();
  at::Tensor G = at::mm(xt, p.sym ? xt.t() : yc.to(scalar).t()).contiguous();
  const T* g = G.data_ptr<T>();
  const double* sx = nx.data_ptr<double>();
  const double* sy = ny.data_ptr<double>();
  const T* x = p.x.data_ptr<T>();
  const T* y = p.y.data_ptr<T>();
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j0 = p.sym ? i + 1 : 0;
    if (p.sym && !p.condensed) out[i * ld + i] = O(0);  // exact zero diagonal
    if (j0 >= m) continue;
    // row[j] is pair (i, j)'s slot: a row of the square, or the row's run of the condensed vector.
    O* row = p.condensed ? out + condensed_index(n, i, j0) - j0 : out + i * ld;
    for (int64_t j = j0; j < m; ++j) {
      const double s = sx[i] + sy[j];
      double v = s - 2.0 * static_cast<double>(g[i * m + j]);
      if (v <= ratio * s) v = direct_sq<T>(x + i * d, y + j * d, d);
      row[j] = static_cast<O>(finish<double>(v, p.metric));
    }
  }
  if (p.sym && !p.condensed) {
    // Mirror the upper triangle in cache-sized blocks (bit-symmetric by construction).
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t bi = 0; bi < n; bi += kTile) {
      for (int64_t bj = bi; bj < n; bj += kTile) {
        for (int64_t i = bi; i < std::min(bi + kTile, n); ++i)
          for (int64_t j = std::max(bj, i + 1); j < std::min(bj + kTile, n); ++j)
            out[j * ld + i] = out[i * ld + j];
      }
    }
  }
}

at::Tensor pairwise_distance_cpu(const at::Tensor& x, const std::optional<at::Tensor>& y,
                                 c10::string_view metric, bool condensed,
                                 std::optional<at::ScalarType> out_dtype,
                                 c10::string_view precision) {
  check_op(x, precision, at::kCPU, "pairwise_distance_cpu");
  const Plan p = make_plan(x, y, metric, condensed, out_dtype);
  at::Tensor out = make_output(p, x.options());
  if (out.numel() == 0) return out;
  const bool gemm = p.d >= gemm_min_d();
  with_types(p, [&](auto t, auto o) {
    using T = decltype(t);
    using O = decltype(o);
    if (gemm) {
      run_cpu_gemm<T, O>(p, out.data_ptr<O>());
    } else {
      run_cpu<T, O>(p, out.data_ptr<O>());
    }
  });
  return out;
}

}  // namespace
}  // namespace distance
}  // namespace simprune

TORCH_LIBRARY_IMPL(simprune, CPU, m) {
  m.impl("pairwise_distance_cpu", &simprune::distance::pairwise_distance_cpu);
}
