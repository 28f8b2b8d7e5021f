// simprune::pairwise_distance_cpu: pairwise distances on the CPU (OpenMP), two paths:
//
// * d < gemm_min_d() (64): direct differences in tiles. Same tiles (kTile x kTile, upper triangle
//   only when x is compared with itself, mirrored), same chunked accumulation and same epilogue as
//   the CUDA kernel (simprune/distance_common.h), so CPU tests exercise the GPU's arithmetic. The
//   inner loop runs over the columns of a transposed y chunk, so it vectorises without
//   reassociating any sum: each pair's squares are added in feature order.
// * d >= 64: one BLAS GEMM per row panel on centred rows, a fused epilogue and an exact repair of
//   the near pairs (the algorithm of the Triton kernel), see run_cpu_gemm.
// Both keep <= 1e-6 relative error in fp32 (<= 1e-12 for a float64 result) on near-duplicate rows;
// the expansion path is faster than torch.cdist at d >= 64 (benchmarks/results/distance_cpu.md).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <type_traits>
#include <vector>

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
// d >= gemm_min_d(): one GEMM on centred rows, a fused epilogue, an exact repair of the near pairs.
// ---------------------------------------------------------------------------------------------
// The algorithm of the Triton kernel (kernels/distance.py), laid out for the CPU's caches:
// * centring in fp64 (column means in a fixed order, then one pass per row: the centred row rounded
//   to the compute type T, and its squared norm from the fp64 values);
// * the Gram matrix by row panels of kPanel rows: at::mm (MKL/OpenBLAS SGEMM or DGEMM) of the
//   panel against the columns from the panel's first row on (x with itself: the upper-triangle
//   trapezoid, half the flops of a full GEMM), into the thread's panel buffer (cache-sized);
// * a fused epilogue per panel row: v = |x_i|^2 + |y_j|^2 - 2 g_ij in fp64; every pair with
//   v <= ratio * (|x_i|^2 + |y_j|^2), where the expansion may have cancelled, is recomputed by
//   direct differences of the original rows (the same add_sq_diff chunks as the direct kernel);
//   then the metric and the row's output segment (square row or condensed run);
// * x with itself, square output: the panel's finished output rows are mirrored, their column j
//   becoming a contiguous segment of output row j (bit-symmetric by construction).
// ratio: 0.25 in fp32 (an emulation of IEEE fp32 GEMM rounding keeps the other pairs within 5e-7),
// 1e-2 in fp64.
// d from which the expansion beats the direct tiles (2-core CPU machine) and goes past torch.cdist.
constexpr int64_t kGemmMinDDefault = 64;
// Rows per GEMM panel (simprune/distance.py _CPU_PANEL_ROWS: the memory estimate).
constexpr int64_t kPanel = 128;
constexpr int64_t kMeanChunk = 256;  // rows per partial column sum (a fixed summation order)

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

// Adds the fp64 column sums of the n x d rows of x to sum, in an order that does not depend on the
// thread count (chunks of kMeanChunk rows, then the chunks in order).
template <typename T>
void add_column_sums(const T* x, int64_t n, int64_t d, double* sum) {
  const int64_t chunks = (n + kMeanChunk - 1) / kMeanChunk;
  std::vector<double> part(chunks * d, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    double* ps = part.data() + c * d;
    for (int64_t i = c * kMeanChunk; i < std::min(n, (c + 1) * kMeanChunk); ++i)
      for (int64_t k = 0; k < d; ++k) ps[k] += static_cast<double>(x[i * d + k]);
  }
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t k = 0; k < d; ++k) sum[k] += part[c * d + k];
}

// xc = T(x - mu) and sq = |x - mu|^2 (from the fp64 differences), one pass per row.
template <typename T>
void centre_rows(const T* x, int64_t n, int64_t d, const double* mu, T* xc, double* sq) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    double acc = 0.0;
    for (int64_t k = 0; k < d; ++k) {
      const double c = static_cast<double>(x[i * d + k]) - mu[k];
      xc[i * d + k] = static_cast<T>(c);
      acc += c * c;
    }
    sq[i] = acc;
  }
}

// The epilogue of one output row i over the columns [j0, j1): g[j] = <xc_i, yc_j>,
// sy[j] = |yc_j|^2, xi / y: the original rows (for the repair). One vectorised pass computes the
// expansion in fp64, the metric and the stores, and ORs the near-pair flags together; only a row
// with a flagged pair takes a second (scalar, rare) pass that recomputes those pairs exactly.
template <typename T, typename O, int kMetric>
inline __attribute__((always_inline)) void epilogue_row(const T* g, const double* sy, double sxi,
                                                        int64_t j0, int64_t j1, double ratio,
                                                        const T* xi, const T* y, int64_t d,
                                                        O* dst) {
  int any = 0;
#pragma omp simd reduction(| : any)
  for (int64_t j = j0; j < j1; ++j) {
    const double s = sxi + sy[j];
    const double v = s - 2.0 * static_cast<double>(g[j]);
    any |= v <= ratio * s;
    dst[j] = static_cast<O>(finish<double>(v, kMetric));
  }
  if (!any) return;
  for (int64_t j = j0; j < j1; ++j) {
    const double s = sxi + sy[j];
    if (s - 2.0 * static_cast<double>(g[j]) <= ratio * s)
      dst[j] = static_cast<O>(finish<double>(direct_sq<T>(xi, y + j * d, d), kMetric));
  }
}

// The epilogue of a row for any metric; T = O = float (the default fp32 path) is cloned for AVX2
// (picked at load time, as tile_sq_f32): 4 doubles per instruction instead of SSE2's 2.
template <typename T, typename O>
inline void epilogue_any(int metric, const T* g, const double* sy, double sxi, int64_t j0,
                         int64_t j1, double ratio, const T* xi, const T* y, int64_t d, O* dst) {
  switch (metric) {
    case kEuclidean:
      return epilogue_row<T, O, kEuclidean>(g, sy, sxi, j0, j1, ratio, xi, y, d, dst);
    case kCosine:
      return epilogue_row<T, O, kCosine>(g, sy, sxi, j0, j1, ratio, xi, y, d, dst);
    default:
      return epilogue_row<T, O, kSqEuclidean>(g, sy, sxi, j0, j1, ratio, xi, y, d, dst);
  }
}

__attribute__((target_clones("avx2", "default"))) void epilogue_f32(
    int metric, const float* g, const double* sy, double sxi, int64_t j0, int64_t j1,
    double ratio, const float* xi, const float* y, int64_t d, float* dst) {
  epilogue_any<float, float>(metric, g, sy, sxi, j0, j1, ratio, xi, y, d, dst);
}

template <typename T, typename O>
inline void epilogue(int metric, const T* g, const double* sy, double sxi, int64_t j0, int64_t j1,
                     double ratio, const T* xi, const T* y, int64_t d, O* dst) {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<O, float>) {
    epilogue_f32(metric, g, sy, sxi, j0, j1, ratio, xi, y, d, dst);
  } else {
    epilogue_any<T, O>(metric, g, sy, sxi, j0, j1, ratio, xi, y, d, dst);
  }
}

template <typename T, typename O>
void run_cpu_gemm(const Plan& p, O* out) {
  const int64_t n = p.n, m = p.m, d = p.d, ld = p.m;
  const double ratio = std::is_same_v<T, double> ? 1e-2 : 0.25;
  const T* x = p.x.data_ptr<T>();
  const T* y = p.y.data_ptr<T>();
  const auto opts = p.x.options();
  // ---- centring (one centre for x and y: distances are translation invariant) ----
  std::vector<double> mu(d, 0.0);
  add_column_sums<T>(x, n, d, mu.data());
  if (!p.sym) add_column_sums<T>(y, m, d, mu.data());
  for (double& v : mu) v /= static_cast<double>(p.sym ? n : n + m);
  at::Tensor xc = at::empty({n, d}, opts), yc = xc;
  std::vector<double> nx(n), ny_own;
  centre_rows<T>(x, n, d, mu.data(), xc.data_ptr<T>(), nx.data());
  const double* ny = nx.data();
  if (!p.sym) {
    yc = at::empty({m, d}, opts);
    ny_own.resize(m);
    centre_rows<T>(y, m, d, mu.data(), yc.data_ptr<T>(), ny_own.data());
    ny = ny_own.data();
  }
  // ---- panels: GEMM, fused epilogue (+ repair), mirror; one panel per thread at a time ----
  // One parallel region for the whole matrix (no barrier per panel: on a shared, oversubscribed
  // machine every barrier can cost a scheduler time slice). Inside it each GEMM runs on its
  // thread alone (BLAS does not nest), panels are handed out largest first. Writes never overlap:
  // panel rows i write columns j > i of row i, the mirror writes columns [i0, i0 + rows) of rows
  // j > i, and those columns belong to this panel only.
  const bool mirror = p.sym && !p.condensed;
  const int64_t panels = (n + kPanel - 1) / kPanel;
#pragma omp parallel
  {
    at::Tensor buf = at::empty({std::min(kPanel, n) * m}, opts);
    T* pp = buf.data_ptr<T>();
#pragma omp for schedule(dynamic, 1)
    for (int64_t pi = 0; pi < panels; ++pi) {
      const int64_t i0 = pi * kPanel, rows = std::min(kPanel, n - i0);
      const int64_t c0 = p.sym ? i0 : 0, cols = m - c0;  // x with itself: columns j >= i0 only
      at::Tensor P = at::from_blob(pp, {rows, cols}, opts);
      at::mm_out(P, xc.narrow(0, i0, rows), yc.narrow(0, c0, cols).t());
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        const int64_t j0 = p.sym ? i + 1 : 0;
        const T* g = pp + r * cols - c0;  // g[j] = <xc_i, yc_j>
        // dst[j] is pair (i, j)'s slot: a row of the square, or the row's run of the condensed
        // vector.
        O* dst = p.condensed ? out + condensed_index(n, i, j0) - j0 : out + i * ld;
        if (mirror) dst[i] = O(0);  // exact zero diagonal
        if (j0 >= m) continue;
        epilogue<T, O>(p.metric, g, ny, nx[i], j0, m, ratio, x + i * d, y, d, dst);
      }
      if (mirror) {
        // Column j of the panel's finished output rows (its rows i < j) -> a contiguous segment
        // of output row j, in 16 x 16 blocks: each block reads 16 rows and writes 16 rows, so its
        // cache lines and pages (TLB entries) are reused instead of one page per element.
        const O* src = out + i0 * ld;
        for (int64_t jb = i0 + 1; jb < m; jb += 16) {
          const int64_t je = std::min<int64_t>(jb + 16, m);
          for (int64_t rb = 0; rb < std::min(rows, je - 1 - i0); rb += 16) {
            for (int64_t j = jb; j < je; ++j) {
              const int64_t re = std::min({rows, j - i0, rb + 16});  // panel rows with i < j
              O* o = out + j * ld + i0;
              for (int64_t r = rb; r < re; ++r) o[r] = src[r * ld + j];
            }
          }
        }
      }
    }
  }
}

// Host bytes the op allocates beyond its inputs: the result, the compute-type copies of x and y
// (make_plan), the centred rows and one panel per thread (run_cpu_gemm), in the widest compute
// type.
int64_t host_bytes_needed(const at::Tensor& x, const std::optional<at::Tensor>& y, bool condensed,
                          std::optional<at::ScalarType> out_dtype) {
  const int64_t n = x.size(0), m = y ? y->size(0) : n, d = x.size(1);
  const bool any64 = x.scalar_type() == at::kDouble || (y && y->scalar_type() == at::kDouble);
  const int64_t elem = out_dtype.value_or(any64 ? at::kDouble : at::kFloat) == at::kDouble ? 8 : 4;
  const int64_t pairs = condensed ? n * (n - 1) / 2 : n * m;
  const int64_t threads = std::max(1, omp_get_max_threads());
  return pairs * elem + 8 * (2 * (n + m) * d + threads * kPanel * m) + 64 * (n + m);
}

at::Tensor pairwise_distance_cpu(const at::Tensor& x, const std::optional<at::Tensor>& y,
                                 c10::string_view metric, bool condensed,
                                 std::optional<at::ScalarType> out_dtype,
                                 c10::string_view precision) {
  check_op(x, precision, at::kCPU, "pairwise_distance_cpu");
  if (x.dim() == 2 && (!y || y->dim() == 2)) {  // else make_plan names the problem
    check_host_memory(host_bytes_needed(x, y, condensed, out_dtype), x.size(0),
                      "the result + the centred rows and one row panel per thread, plus O(n)",
                      "simprune::pairwise_distance_cpu");
  }
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
