// Single linkage on the GPU as a Boruvka minimum spanning tree: the exact path of
// simprune::linkage_cuda for method "single" (the op: csrc/cuda/linkage.cpp). The rounds of
// linkage_rounds.cu would need hundreds to thousands of rounds there; Boruvka needs at most
// ceil(log2 n) host-looped iterations of a few plain kernels, with the same steps, tie rules and log
// order as linkage_boruvka_triton (kernels/linkage.py), so both give the same Z bit for bit. Each
// iteration: the lightest edge from every vertex to another component (one warp per vertex), per
// component the lightest of those under the total order (w, min id, max id) -- so the choice graph is
// a forest -- then hooking and pointer doubling (ceil(log2 components) parallel steps). Heights are
// input distances; the log is sorted stably by height and relabelled as scipy's label(). All indices
// are int64.
// SIMPRUNE_CUDA_DEVICE_ONLY (with SIMPRUNE_HOST_HARNESS, which leaves out the host code): the
// kernels alone, without torch's headers (tests/test_linkage_cuda.py reads ptxas' registers/spills).
#ifndef SIMPRUNE_CUDA_DEVICE_ONLY
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <utility>

#ifndef SIMPRUNE_CUDA_DEVICE_ONLY
#include "linkage_cuda.h"
#include "simprune/host_common.h"
#endif
#include "linkage_device.cuh"
#include "simprune/linkage_common.h"

namespace simprune {
namespace linkage {
namespace {

constexpr unsigned long long kNoKey = 0x7fffffffffffffffull;

// -0.0 and +0.0 compare equal as doubles; as bit patterns (the atomic min below) they must be one.
__device__ inline unsigned long long weight_bits(double w) {
  return static_cast<unsigned long long>(__double_as_longlong(__dadd_rn(w, 0.0)));
}

// The lightest edge from every vertex to another component (one warp per vertex, smallest index
// wins ties: for a fixed vertex that is the global order (w, min id, max id)).
template <typename T>
__global__ void boruvka_rowmin_kernel(const T* S, const int64_t* comp, double* w, int64_t* u,
                                      int64_t n) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (int64_t{gridDim.x} * blockDim.x) >> 5;
  for (int64_t v = warp; v < n; v += warps) {
    const int64_t cv = comp[v];
    const T* row = S + v * n;
    double bv = INFINITY;
    int64_t bi = INT64_MAX;
    for (int64_t c = lane; c < n; c += 32) {
      if (comp[c] == cv) continue;
      const double x = row[c];
      if (nn_better(x, c, bv, bi)) {
        bv = x;
        bi = c;
      }
    }
    warp_first_min(&bv, &bi);
    if (lane == 0) {
      w[v] = bv;
      u[v] = bv < INFINITY ? bi : -1;
    }
  }
}

__global__ void boruvka_reset_kernel(unsigned long long* cw, unsigned long long* ck, int64_t n) {
  for (int64_t t = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; t < n;
       t += int64_t{gridDim.x} * blockDim.x) {
    cw[t] = ~0ull;
    ck[t] = kNoKey;
  }
}

// Per component: the lightest weight (step 1), then the smallest (min id, max id) at it (step 2).
__global__ void boruvka_component_kernel(const int64_t* comp, const double* w, const int64_t* u,
                                         unsigned long long* cw, unsigned long long* ck, int64_t n,
                                         int step) {
  for (int64_t v = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; v < n;
       v += int64_t{gridDim.x} * blockDim.x) {
    const int64_t x = u[v];
    if (x < 0) continue;
    const unsigned long long bits = weight_bits(w[v]);
    if (step == 1) {
      atomicMin(cw + comp[v], bits);
    } else if (bits == cw[comp[v]]) {
      const int64_t a = v < x ? v : x, b = v < x ? x : v;
      atomicMin(ck + comp[v], static_cast<unsigned long long>(a * n + b));
    }
  }
}

// One block: every root (comp[c] == c) with an edge hooks onto the other component; a mutual
// choice is one edge, logged by the smaller root, which stays a root. Edges are logged in
// increasing root order after the k already logged (ctrl[0]).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    boruvka_hook_kernel(const T* S, const int64_t* comp, const unsigned long long* ck,
                        int64_t* parent, double* log, int64_t* ctrl, int64_t n) {
  __shared__ int64_t warp_sums[kWarps + 1];
  const int64_t k = ctrl[0];
  int64_t base = 0;
  for (int64_t c0 = 0; c0 < n; c0 += kThreads) {
    const int64_t c = c0 + threadIdx.x;
    int rec = 0;
    int64_t ea = 0, eb = 0;
    if (c < n) {
      int64_t p = c;
      if (comp[c] == c && ck[c] != kNoKey) {
        const int64_t key = static_cast<int64_t>(ck[c]);
        ea = key / n;
        eb = key - ea * n;
        const int64_t other = comp[ea] == c ? comp[eb] : comp[ea];
        const bool mutual = ck[other] == ck[c];
        const bool keep_self = mutual && c < other;
        rec = !mutual || keep_self;
        p = keep_self ? c : other;
      }
      parent[c] = p;
    }
    int64_t total;
    const int64_t off = block_exclusive_scan(rec, &total, warp_sums);
    if (rec) {
      const int64_t q = k + base + off;
      log[3 * q + 0] = static_cast<double>(ea);
      log[3 * q + 1] = static_cast<double>(eb);
      log[3 * q + 2] = static_cast<double>(S[ea * n + eb]);
    }
    base += total;
  }
  if (threadIdx.x == 0) {
    ctrl[0] = k + base;
    ctrl[1] = base > ctrl[1] ? base : ctrl[1];  // the most edges in one iteration
  }
}

// One step of pointer doubling (as the Triton Borůvka, kernels/linkage.py): dst[c] = src[src[c]].
// The host runs boruvka_jump_steps of them, ping-ponging two buffers: every label then holds the
// surviving root of its chain (roots map to themselves, so a step past convergence changes nothing).
// The old walk followed each chain serially: O(n) dependent loads per thread on a chain of
// geometrically shrinking gaps, where every vertex hooks onto its right neighbour.
__global__ void boruvka_jump_step_kernel(const int64_t* __restrict__ src, int64_t* __restrict__ dst,
                                         int64_t n) {
  for (int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; c < n;
       c += int64_t{gridDim.x} * blockDim.x)
    dst[c] = src[src[c]];
}

// The number of doubling steps for `components` components: a chain of the choice forest (a forest:
// the edge order is total) has fewer edges than there are components, and step s covers 2^s of them.
inline int boruvka_jump_steps(int64_t components) {
  int steps = 0;
  for (int64_t reach = 1; reach < components; reach *= 2) ++steps;
  return steps;
}

__global__ void boruvka_relabel_kernel(int64_t* comp, const int64_t* label, int64_t n) {
  for (int64_t v = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; v < n;
       v += int64_t{gridDim.x} * blockDim.x)
    comp[v] = label[comp[v]];
}

#ifndef SIMPRUNE_HOST_HARNESS  // csrc/harness compiles the device code above as host C++
// ---- host side ---------------------------------------------------------------------------------------
// stats = (iterations, 0, most edges in one iteration). T: the storage type of the square matrix.
template <typename T>
std::tuple<at::Tensor, at::Tensor> boruvka_typed(const at::Tensor& d, int64_t n, const char* op) {
  at::Tensor stats = at::zeros({3}, at::TensorOptions().dtype(at::kLong));
  const auto f64 = d.options().dtype(at::kDouble);
  const auto i64 = d.options().dtype(at::kLong);
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor S = at::empty({n * n}, d.options().dtype(c10::CppTypeToScalarType<T>::value));
  launch_square(d.data_ptr(), d.scalar_type() == at::kDouble, 0, S.data_ptr<T>(), n, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor comp = at::arange(n, i64);
  at::Tensor iv = at::empty({4, n}, i64);  // u, parent, label, ck
  at::Tensor w = at::empty({n}, f64);
  at::Tensor cw = at::empty({n}, i64);
  at::Tensor log = at::empty({n - 1, 3}, f64);
  at::Tensor ctrl = at::zeros({2}, i64);  // edges logged, most in one iteration
  int64_t* u = iv.data_ptr<int64_t>();
  int64_t* parent = u + n;
  int64_t* root = u + 2 * n;
  auto* ck = reinterpret_cast<unsigned long long*>(u + 3 * n);
  auto* cwp = reinterpret_cast<unsigned long long*>(cw.data_ptr<int64_t>());
  const unsigned rows_blocks = static_cast<unsigned>(std::min<int64_t>((n * 32 + 255) / 256, 65535));
  const unsigned lin_blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65535));
  int64_t k = 0, iters = 0;
  while (k < n - 1) {
    ++iters;
    boruvka_rowmin_kernel<T><<<rows_blocks, 256, 0, stream>>>(
        S.data_ptr<T>(), comp.data_ptr<int64_t>(), w.data_ptr<double>(), u, n);
    boruvka_reset_kernel<<<lin_blocks, 256, 0, stream>>>(cwp, ck, n);
    boruvka_component_kernel<<<lin_blocks, 256, 0, stream>>>(
        comp.data_ptr<int64_t>(), w.data_ptr<double>(), u, cwp, ck, n, 1);
    boruvka_component_kernel<<<lin_blocks, 256, 0, stream>>>(
        comp.data_ptr<int64_t>(), w.data_ptr<double>(), u, cwp, ck, n, 2);
    boruvka_hook_kernel<T><<<1, kThreads, 0, stream>>>(S.data_ptr<T>(), comp.data_ptr<int64_t>(),
                                                    ck, parent, log.data_ptr<double>(),
                                                    ctrl.data_ptr<int64_t>(), n);
    // Pointer doubling, ping-pong between parent and root; `label` ends on the last written one.
    int64_t* label = parent;
    int64_t* spare = root;
    for (int s = boruvka_jump_steps(n - k); s > 0; --s) {
      boruvka_jump_step_kernel<<<lin_blocks, 256, 0, stream>>>(label, spare, n);
      std::swap(label, spare);
    }
    boruvka_relabel_kernel<<<lin_blocks, 256, 0, stream>>>(comp.data_ptr<int64_t>(), label, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t k_new = ctrl[0].item<int64_t>();  // one synchronisation per iteration
    TORCH_CHECK(k_new > k, op, ": Boruvka found no edge with ", n - k, " components left");
    k = k_new;
  }
  const at::Tensor log_h = log.cpu();
  // The key: the heights (column 2 of the log), which are distances (never NaN here).
  const at::Tensor heights = log_h.select(1, 2).contiguous();
  at::Tensor Z = at::empty({n - 1, 4}, at::TensorOptions().dtype(at::kDouble));
  sort_and_label(log_h.data_ptr<double>(), 3, heights.data_ptr<double>(), n, Z.data_ptr<double>());
  stats[0] = iters;
  stats[2] = ctrl[1].item<int64_t>();
  return {Z.to(d.device()), stats.to(d.device())};
}

#endif  // SIMPRUNE_HOST_HARNESS
}  // namespace

#ifndef SIMPRUNE_HOST_HARNESS
int64_t boruvka_bytes_needed(int64_t n, int64_t elem) { return elem * n * n + 96 * n + 1024; }

std::tuple<at::Tensor, at::Tensor> boruvka_cuda(const at::Tensor& d, int64_t n, bool fp32,
                                                const char* op) {
  return fp32 ? boruvka_typed<float>(d, n, op) : boruvka_typed<double>(d, n, op);
}
#endif  // SIMPRUNE_HOST_HARNESS

}  // namespace linkage
}  // namespace simprune
