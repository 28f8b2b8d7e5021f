// simprune::pairwise_distance_cuda: tiled direct-difference distances on the GPU.
//
// The straightforward CUDA C++ counterpart of kernels/distance.py, kept simple so the two can be
// compared in the benchmarks:
// * one thread block per kTile x kTile output tile; only upper-triangle tiles when x is compared with
//   itself (ti <= tj, decoded from the linear block index), each written to (r, c) and mirrored to
//   (c, r): bit-symmetric by construction, exact-zero diagonal, or scipy's condensed order directly;
// * 16 x 16 threads, each owning a 4 x 4 register micro-tile (rows ty + 16 i, columns tx + 16 j);
// * x and y chunks of kChunk features staged in shared memory, transposed (feature-major), so a
//   warp reads consecutive columns;
// * direct differences, squares summed in fp32 within a chunk then in fp64 across chunks
//   (simprune/distance_common.h: the same arithmetic as the C++ CPU kernel; no cancellation, so
//   near-duplicate pairs keep ~1e-7 relative accuracy). fp64 inputs and cosine compute in fp64.
// Built with --fmad=false (setup.py), so the device rounds like the host kernel.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "simprune/distance_common.h"
#include "simprune/distance_host.h"

namespace simprune {
namespace distance {
namespace {

constexpr int kThreads = 16;             // threads per tile edge
constexpr int kMicro = kTile / kThreads;  // 4 x 4 outputs per thread

template <typename T, typename O>
__global__ void __launch_bounds__(kThreads* kThreads)
    distance_kernel(const T* __restrict__ x, const T* __restrict__ y, O* __restrict__ out,
                    int64_t n, int64_t m, int64_t d, int64_t tm, bool sym, bool condensed,
                    int metric) {
  // +1 column of padding: the transposed stores below hit distinct banks.
  __shared__ T xs[kChunk][kTile + 1];
  __shared__ T ys[kChunk][kTile + 1];
  int64_t ti, tj;
  const int64_t b = blockIdx.x;
  if (sym) {
    tri_tile(b, &ti, &tj);
  } else {
    ti = b / tm;
    tj = b % tm;
  }
  const int64_t r0 = ti * kTile, c0 = tj * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kThreads + tx;

  double acc[kMicro][kMicro];
#pragma unroll
  for (int i = 0; i < kMicro; ++i)
#pragma unroll
    for (int j = 0; j < kMicro; ++j) acc[i][j] = 0.0;

  for (int64_t k0 = 0; k0 < d; k0 += kChunk) {
    // Stage kTile rows x kChunk features of x and y (zero-padded at the edges), feature-major.
    for (int e = tid; e < kTile * kChunk; e += kThreads * kThreads) {
      const int row = e / kChunk, k = e % kChunk;
      const int64_t gk = k0 + k, gx = r0 + row, gy = c0 + row;
      xs[k][row] = (gx < n && gk < d) ? x[gx * d + gk] : T(0);
      ys[k][row] = (gy < m && gk < d) ? y[gy * d + gk] : T(0);
    }
    __syncthreads();
    typename Acc<T>::chunk part[kMicro][kMicro];
#pragma unroll
    for (int i = 0; i < kMicro; ++i)
#pragma unroll
      for (int j = 0; j < kMicro; ++j) part[i][j] = 0;
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      T a[kMicro], bv[kMicro];
#pragma unroll
      for (int i = 0; i < kMicro; ++i) a[i] = xs[k][ty + kThreads * i];
#pragma unroll
      for (int j = 0; j < kMicro; ++j) bv[j] = ys[k][tx + kThreads * j];
#pragma unroll
      for (int i = 0; i < kMicro; ++i)
#pragma unroll
        for (int j = 0; j < kMicro; ++j) add_sq_diff<T>(a[i], bv[j], &part[i][j]);
    }
#pragma unroll
    for (int i = 0; i < kMicro; ++i)
#pragma unroll
      for (int j = 0; j < kMicro; ++j) acc[i][j] += static_cast<double>(part[i][j]);
    __syncthreads();
  }

  const int64_t ld = m;
  int64_t dst[2];
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int64_t gr = r0 + ty + kThreads * i, gc = c0 + tx + kThreads * j;
      if (sym && gr == gc) {
        if (!condensed && gr < n) out[gr * ld + gc] = O(0);  // exact zero diagonal
        continue;
      }
      const int k = destinations(gr, gc, n, m, ld, sym, condensed, dst);
      if (k == 0) continue;
      const O v = static_cast<O>(finish<double>(acc[i][j], metric));
      out[dst[0]] = v;
      if (k == 2) out[dst[1]] = v;
    }
  }
}

template <typename T, typename O>
void launch(const Plan& p, at::Tensor& out) {
  const int64_t tn = (p.n + kTile - 1) / kTile, tm = (p.m + kTile - 1) / kTile;
  const int64_t blocks = p.sym ? tri_count(tn) : tn * tm;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "pairwise_distance_cuda: too many tiles");
  const dim3 threads(kThreads, kThreads);
  auto stream = at::cuda::getCurrentCUDAStream();
  distance_kernel<T, O><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
      p.x.data_ptr<T>(), p.y.data_ptr<T>(), out.data_ptr<O>(), p.n, p.m, p.d, tm, p.sym,
      p.condensed, p.metric);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor pairwise_distance_cuda(const at::Tensor& x, const std::optional<at::Tensor>& y,
                                  c10::string_view metric, bool condensed,
                                  std::optional<at::ScalarType> out_dtype,
                                  c10::string_view precision) {
  check_op(x, precision, at::kCUDA, "pairwise_distance_cuda");
  const c10::cuda::CUDAGuard guard(x.device());
  const Plan p = make_plan(x, y, metric, condensed, out_dtype);
  at::Tensor out = make_output(p, x.options());
  if (out.numel() == 0) return out;
  with_types(p, [&](auto t, auto o) { launch<decltype(t), decltype(o)>(p, out); });
  return out;
}

}  // namespace
}  // namespace distance
}  // namespace simprune

TORCH_LIBRARY_IMPL(simprune, CUDA, m) {
  m.impl("pairwise_distance_cuda", &simprune::distance::pairwise_distance_cuda);
}
