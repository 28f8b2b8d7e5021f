// simprune::linkage_cuda and simprune::linkage_rounds_cuda: the exact round-synchronous linkage on
// the GPU (linkage.md section 7.3, "simpler first version"), host-free.
//
// The algorithm is the CPU twin's (csrc/cpu/linkage_rounds.cpp) and the Triton path's
// (kernels/linkage.py): the same rounds, tie rules, phase-2 canonical order, compaction rule and sort
// key, and the same per-element arithmetic (simprune/linkage_common.h: Lance-Williams in scipy's
// operation order with explicitly rounded intrinsics, so no FMA whatever --fmad says), hence the same
// Z bit for bit. Every round:
//   A. row argmin of every slot (one warp per row, coalesced; smallest slot wins ties; dead slots
//      and the diagonal hold +inf);
//   B. reciprocal pairs (i < j, nn[i] = j, nn[j] = i) in slot order (one block, a block-wide scan),
//      logged as merges (representative leaves, height, effective height for the sort key);
//   C. Lance-Williams phase 1 (row and column i of each pair, over live columns outside the pairs)
//      and phase 2 (entries between two new clusters, canonical order) -- they touch disjoint
//      entries, so they share one barrier interval;
//   D. sizes, dead slots' rows and columns poisoned with +inf;
//   E. when the active count has halved: stable compaction into the other of two buffers (the
//      second holds at most (n/2)^2 elements: 1.25 x 8 n^2 bytes in all).
// The whole loop is ONE cooperative (persistent) kernel with grid-wide barriers between the phases,
// so the host never synchronises per round. When the active width drops to kSoloMax, all blocks but
// block 0 leave and block 0 finishes the rounds alone with block barriers only (the tail is
// latency-bound and L2-resident, linkage.md 7.3 step 7). The merge log is then copied to the host,
// sorted stably by (effective height, discovery order) and relabelled as scipy's label().
//
// Single linkage (linkage_cuda with method "single") is a Boruvka MST instead (the rounds would need
// hundreds to thousands of rounds there): at most ceil(log2 n) host-looped iterations of a few plain
// kernels, with the same rules and log order as the Triton Boruvka. linkage_rounds_cuda and the
// batched kernel still run single through the rounds (exact as well; the twin does the same).
// Memory: refused up front with the needed and free bytes. All indices are int64 (n^2 > 2^31 at
// n = 46,341).
#if __cplusplus >= 202002L  // torch >= 2.10 ATen headers need C++20

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cooperative_groups.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "simprune/linkage_common.h"
#include "simprune/linkage_host.h"
#include "linkage_strict.h"
#include "warp_min.cuh"

namespace cg = cooperative_groups;

namespace simprune {
namespace linkage {
namespace {

constexpr int kThreads = 512;          // threads per block (16 warps)
constexpr int64_t kSoloMax = 512;      // width at which block 0 finishes alone
constexpr int kWarps = kThreads / 32;

// Device-side control block: written by block 0 thread 0, read by every block after a barrier.
struct Ctrl {
  int64_t np;       // pairs found this round
  int64_t error;    // 1: a round found no reciprocal pair (non-finite values after an update)
  int64_t rounds;
  int64_t compactions;
  int64_t widest;
  int64_t merges;
};

// T: the storage type of the matrix (double; float for storage=float32, where Lance-Williams is still
// evaluated in double and each stored value rounded -- the CPU twin's float storage, bit for bit).
template <typename T>
struct StateT {
  T* S[2];          // the square matrix and the compaction buffer (ping-pong)
  int64_t* rep[2];  // representative leaf per slot (ping-pong with S)
  int64_t* size[2];
  int64_t* last[2];  // the slot's latest merge, -1 for a leaf
  int8_t* state;     // 0 live, 1 paired this round, 2 dead
  int64_t* nn;
  int64_t* keep;     // compaction: new slot -> old slot
  int64_t* pi;       // this round's pairs (slots) and heights
  int64_t* pj;
  double* ph;
  double* log;  // merges in discovery order: rep_a, rep_b, height
  double* eff;  // effective height per merge (the sort key)
  Ctrl* ctrl;
  int64_t n;
};

// ---- block-wide exclusive scan of 0/1 flags (returns the offset, writes the block total) ---------
__device__ inline int64_t block_exclusive_scan(int flag, int64_t* total, int64_t* warp_sums) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  const int in_warp = __popc(ballot & ((1u << lane) - 1u));
  if (lane == 0) warp_sums[warp] = __popc(ballot);
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t acc = 0;
    for (int w = 0; w < kWarps; ++w) {
      const int64_t v = warp_sums[w];
      warp_sums[w] = acc;
      acc += v;
    }
    warp_sums[kWarps] = acc;
  }
  __syncthreads();
  const int64_t off = warp_sums[warp] + in_warp;
  *total = warp_sums[kWarps];
  __syncthreads();  // warp_sums is reused by the next call
  return off;
}

// The rounds of one linkage. Cooperative launch (grouped = false): the whole grid works on one
// matrix with grid barriers, then block 0 alone below kSoloMax (a one-block grid is solo from the
// start). Grouped launch (grouped = true, an ordinary launch): every block runs its own problem solo.
template <int M, typename T>
__device__ void run_rounds(const StateT<T>& st, bool grouped) {
  cg::grid_group grid = cg::this_grid();  // synchronised only in cooperative, non-solo mode
  __shared__ int64_t warp_sums[kWarps + 1];
  const int64_t n = st.n;
  int64_t m = n, active = n, k = 0, rounds = 0, compactions = 0, widest = 0;
  int buf = 0;
  const bool leader = grouped || blockIdx.x == 0;  // the block that scans pairs and compacts
  bool solo = grouped || gridDim.x == 1;
  auto sync = [&]() {
    if (solo) {
      __syncthreads();
    } else {
      grid.sync();
    }
  };
  constexpr double kInf = INFINITY;
  const T kInfT = static_cast<T>(INFINITY);

  while (active > 1) {
    if (!solo && m <= kSoloMax) {  // every block takes this decision at the same point
      solo = true;
      if (!leader) return;
    }
    const int64_t start = solo ? threadIdx.x : int64_t{blockIdx.x} * kThreads + threadIdx.x;
    const int64_t stride = solo ? kThreads : int64_t{gridDim.x} * kThreads;
    T* S = st.S[buf];
    int64_t* rep = st.rep[buf];
    int64_t* size = st.size[buf];
    int64_t* last = st.last[buf];
    ++rounds;

    // ---- A. row argmin, one warp per row
    {
      const int lane = threadIdx.x & 31;
      for (int64_t r = start >> 5; r < m; r += stride >> 5) {
        const T* row = S + r * m;
        double bv = kInf;
        int64_t bi = INT64_MAX;
        for (int64_t c = lane; c < m; c += 32) {
          const double v = row[c];
          if (nn_better(v, c, bv, bi)) {
            bv = v;
            bi = c;
          }
        }
        warp_first_min(&bv, &bi);
        if (lane == 0) st.nn[r] = bv < kInf ? bi : -1;
      }
    }
    sync();

    // ---- B. reciprocal pairs in slot order, logged (the leader block)
    if (leader) {
      int64_t base = 0;
      for (int64_t c0 = 0; c0 < m; c0 += kThreads) {
        const int64_t i = c0 + threadIdx.x;
        int flag = 0;
        int64_t j = -1;
        if (i < m) {
          j = st.nn[i];
          flag = j > i && st.nn[j] == i;
        }
        int64_t total;
        const int64_t off = block_exclusive_scan(flag, &total, warp_sums);
        if (flag) {
          const int64_t q = base + off, kq = k + q;
          const double h = static_cast<double>(S[i * m + j]);
          st.pi[q] = i;
          st.pj[q] = j;
          st.ph[q] = h;
          st.log[3 * kq + 0] = static_cast<double>(rep[i]);
          st.log[3 * kq + 1] = static_cast<double>(rep[j]);
          st.log[3 * kq + 2] = h;
          const double ea = last[i] >= 0 ? st.eff[last[i]] : -1.0;
          const double eb = last[j] >= 0 ? st.eff[last[j]] : -1.0;
          st.eff[kq] = effective_height(h, ea, eb);
          last[i] = kq;
          st.state[i] = 1;
          st.state[j] = 1;
        }
        base += total;
      }
      if (threadIdx.x == 0) {
        st.ctrl->np = base;
        if (base == 0) st.ctrl->error = 1;
      }
    }
    sync();
    const int64_t np = *static_cast<volatile int64_t*>(&st.ctrl->np);
    if (np == 0) break;  // every block reads the same value: a consistent exit
    widest = np > widest ? np : widest;

    // ---- C. Lance-Williams: phase 1 (columns outside the pairs) and phase 2 (between new clusters)
    for (int64_t t = start; t < np * m; t += stride) {
      const int64_t p = t / m, c = t - p * m;
      if (st.state[c] != 0) continue;
      const int64_t i = st.pi[p], j = st.pj[p];
      const T v = static_cast<T>(
          lance_williams<M>(S[i * m + c], S[j * m + c], st.ph[p], size[i], size[j], size[c]));
      S[i * m + c] = v;
      S[c * m + i] = v;
    }
    for (int64_t t = start; t < np * np; t += stride) {
      const int64_t p = t / np, q = t - p * np;
      if (q <= p) continue;
      const int64_t ip = st.pi[p], jp = st.pj[p], iq = st.pi[q], jq = st.pj[q];
      // The intermediate (merge p first) stays in double; only the stored value is rounded.
      const T v = static_cast<T>(lance_williams_pair<M>(S[ip * m + iq], S[jp * m + iq],
                                                        S[ip * m + jq], S[jp * m + jq], st.ph[p],
                                                        st.ph[q], size[ip], size[jp], size[iq],
                                                        size[jq]));
      S[ip * m + iq] = v;
      S[iq * m + ip] = v;
    }
    sync();

    // ---- D. bookkeeping: sizes, states, dead rows and columns poisoned
    for (int64_t t = start; t < np; t += stride) {
      const int64_t i = st.pi[t], j = st.pj[t];
      size[i] += size[j];
      size[j] = 0;
      st.state[i] = 0;
      st.state[j] = 2;
    }
    for (int64_t t = start; t < np * m; t += stride) {
      const int64_t p = t / m, c = t - p * m;
      const int64_t j = st.pj[p];
      S[j * m + c] = kInfT;
      S[c * m + j] = kInfT;
    }
    k += np;
    active -= np;
    sync();

    // ---- E. compaction when the active count has halved (stable: slot order is kept)
    if (active > 1 && 2 * active <= m) {
      ++compactions;
      const int nb = buf ^ 1;
      if (leader) {
        int64_t base = 0;
        for (int64_t c0 = 0; c0 < m; c0 += kThreads) {
          const int64_t r = c0 + threadIdx.x;
          const int flag = r < m && st.state[r] != 2;
          int64_t total;
          const int64_t off = block_exclusive_scan(flag, &total, warp_sums);
          if (flag) {
            const int64_t x = base + off;
            st.keep[x] = r;
            st.rep[nb][x] = rep[r];
            st.size[nb][x] = size[r];
            st.last[nb][x] = last[r];
          }
          base += total;
        }
      }
      sync();
      const int64_t a = active;
      T* dst = st.S[nb];
      for (int64_t t = start; t < a * a; t += stride) {
        const int64_t x = t / a, y = t - x * a;
        dst[t] = S[st.keep[x] * m + st.keep[y]];
      }
      for (int64_t t = start; t < a; t += stride) st.state[t] = 0;
      buf = nb;
      m = a;
      sync();
    }
  }
  if (leader && threadIdx.x == 0) {
    st.ctrl->rounds = rounds;
    st.ctrl->compactions = compactions;
    st.ctrl->widest = widest;
    st.ctrl->merges = k;
  }
}

template <int M, typename T>
__global__ void __launch_bounds__(kThreads) rounds_kernel(StateT<T> st) {
  run_rounds<M, T>(st, false);
}

// Batched small layers (linkage.md 7.5): one block per problem, all problems in one launch.
template <int M>
__global__ void __launch_bounds__(kThreads) grouped_rounds_kernel(const StateT<double>* states) {
  run_rounds<M, double>(states[blockIdx.x], true);
}

// Condensed (scipy pdist order) -> square matrix of the storage type, +inf diagonal; (r, c) and (c, r)
// read the same element, so the matrix is bit-symmetric.
template <typename Tin, typename T>
__global__ void square_kernel(const Tin* __restrict__ d, T* __restrict__ S, int64_t n) {
  const int64_t total = n * n;
  for (int64_t t = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = t / n, c = t - r * n;
    if (r == c) {
      S[t] = static_cast<T>(INFINITY);
    } else {
      const int64_t lo = r < c ? r : c, hi = r < c ? c : r;
      S[t] = static_cast<T>(d[row_offset(n, lo) + hi]);
    }
  }
}

__global__ void init_slots_kernel(int64_t* rep, int64_t* size, int64_t* last, int8_t* state,
                                  int64_t n) {
  for (int64_t t = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; t < n;
       t += int64_t{gridDim.x} * blockDim.x) {
    rep[t] = t;
    size[t] = 1;
    last[t] = -1;
    state[t] = 0;
  }
}

// ---- single linkage: Boruvka MST on the square matrix -------------------------------------------------
// The same steps, tie rules and log order as linkage_boruvka_triton (kernels/linkage.py), so both give
// the same Z bit for bit. Host-looped: at most ceil(log2 n) iterations, one synchronisation each.
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

// Every label follows its parent chain to the surviving root (the choice graph is a forest).
__global__ void boruvka_jump_kernel(const int64_t* parent, int64_t* label, int64_t n) {
  for (int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; c < n;
       c += int64_t{gridDim.x} * blockDim.x) {
    // The choice graph is a forest, so a chain is shorter than n; the bound only guards against a
    // hang should that ever be violated (the host then sees no progress and raises).
    int64_t r = c;
    for (int64_t s = 0; parent[r] != r && s < n; ++s) r = parent[r];
    label[c] = r;
  }
}

__global__ void boruvka_relabel_kernel(int64_t* comp, const int64_t* label, int64_t n) {
  for (int64_t v = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; v < n;
       v += int64_t{gridDim.x} * blockDim.x)
    comp[v] = label[comp[v]];
}

// ---- host side ---------------------------------------------------------------------------------------
int parse_method_cuda(const std::string& method, const char* op) {
  if (method == "single") return kSingle;
  if (method == "complete") return kComplete;
  if (method == "average") return kAverage;
  if (method == "weighted") return kWeighted;
  if (method == "ward") return kWard;
  TORCH_CHECK_NOT_IMPLEMENTED(method != "centroid" && method != "median", op, ": method '", method,
                              "' is not reducible, so reciprocal-nearest-neighbour rounds do not "
                              "apply; use backend='torch' (scipy)");
  TORCH_CHECK_VALUE(false, op, ": unknown linkage method '", method,
                    "'; expected single, complete, average, weighted or ward");
  return -1;
}

int64_t check_input(const at::Tensor& d, const char* op) {
  TORCH_CHECK_VALUE(d.dim() == 1, op, ": expected a 1-D condensed distance vector, got shape ",
                    d.sizes());
  TORCH_CHECK_TYPE(d.scalar_type() == at::kFloat || d.scalar_type() == at::kDouble, op,
                   ": distances must be float32 or float64, got ", d.scalar_type());
  TORCH_CHECK(d.is_cuda(), op, ": the cuda backend needs a CUDA tensor, got one on ", d.device());
  const int64_t len = d.numel();
  int64_t n = 1;
  if (len > 0) {
    n = static_cast<int64_t>(
        std::llround((1.0 + std::sqrt(1.0 + 8.0 * static_cast<double>(len))) / 2.0));
  }
  TORCH_CHECK_VALUE(n * (n - 1) / 2 == len, op,
                    ": a condensed distance vector must have length n(n-1)/2 for some n; got "
                    "length ",
                    len);
  return n;
}

// Values (after the memory check: these reductions themselves allocate O(n^2) bytes).
// fp32: float32 storage, where a float64 value beyond float32's range would become Inf (counted so).
void check_values(const at::Tensor& d, const char* op, bool fp32 = false) {
  const int64_t len = d.numel();
  if (len > 0) {
    // One small host round trip for the three counts.
    const at::Tensor inf = fp32 && d.scalar_type() == at::kDouble
                               ? (at::abs(d) > std::numeric_limits<float>::max()).sum()
                               : at::isinf(d).sum();
    const at::Tensor counts = at::stack({at::isnan(d).sum(), inf, (d < 0).sum()}).cpu();
    const int64_t* c = counts.data_ptr<int64_t>();
    TORCH_CHECK_VALUE(c[0] == 0 && c[1] == 0, op, ": distances contain ", c[0], " NaN and ", c[1],
                      " Inf value(s); linkage needs finite distances",
                      fp32 ? " (with storage=torch.float32, values beyond float32's range, 3.4e38, "
                             "count as Inf)"
                           : "");
    TORCH_CHECK_VALUE(c[2] == 0, op, ": distances must be non-negative; found ", c[2],
                      " negative value(s)");
  }
}

// The working matrix's dtype: float64 (None, the default) or float32. Returns true for float32.
bool parse_storage_cuda(const std::optional<at::ScalarType>& storage, const char* op) {
  if (!storage.has_value() || *storage == at::kDouble) return false;
  TORCH_CHECK_VALUE(*storage == at::kFloat, op,
                    ": storage must be torch.float64 or torch.float32, got ", *storage);
  return true;
}

// Bytes one problem needs on the device: both matrix buffers (elem bytes per entry) and the O(n)
// arrays.
int64_t bytes_needed(int64_t n, int64_t elem = 8) {
  const int64_t h = n / 2;
  return elem * (n * n + std::max<int64_t>(h * h, 1)) + n * (2 * 3 * 8 + 1 + 4 * 8 + 8) +
         std::max<int64_t>(n - 1, 1) * 8 * 4 + 1024;
}

// elem: bytes per matrix entry (8: float64 storage, 4: float32), for the message.
void check_memory(int64_t need, int64_t n, const at::Device& dev, const char* op,
                  int64_t elem = 8) {
  const int64_t avail = available_device_bytes(dev);
  TORCH_CHECK_WITH(OutOfMemoryError, need <= avail, op, ": n = ", n, " needs ", need,
                   " bytes of GPU memory (the square matrix in ", elem == 8 ? "float64" : "float32",
                   ", ", elem, " n^2 bytes, plus a compaction buffer of a quarter of it), but only ",
                   avail, " bytes are free on ", dev,
                   elem == 8 ? " (storage=torch.float32 would halve it)" : "");
}

// The device buffers of one problem (tensors keep them alive) and the State that points into them.
template <typename T>
struct ProblemT {
  at::Tensor S0, S1, slots, state, aux, ph, log, eff, ctrl;
  StateT<T> st{};

  ProblemT(int64_t n, const at::TensorOptions& opts) {
    const auto f64 = opts.dtype(at::kDouble);
    const auto i64 = opts.dtype(at::kLong);
    const auto ft = opts.dtype(c10::CppTypeToScalarType<T>::value);
    const int64_t h = n / 2;
    S0 = at::empty({n * n}, ft);
    S1 = at::empty({std::max<int64_t>(h * h, 1)}, ft);
    slots = at::empty({6, n}, i64);  // rep, size, last (x2: ping-pong)
    state = at::empty({n}, opts.dtype(at::kChar));
    aux = at::empty({4, n}, i64);  // nn, keep, pi, pj
    ph = at::empty({n}, f64);
    log = at::empty({n - 1, 3}, f64);
    eff = at::empty({n - 1}, f64);
    ctrl = at::zeros({static_cast<int64_t>(sizeof(Ctrl) / 8)}, i64);
    st.S[0] = S0.data_ptr<T>();
    st.S[1] = S1.data_ptr<T>();
    int64_t* sp = slots.data_ptr<int64_t>();
    for (int b = 0; b < 2; ++b) {
      st.rep[b] = sp + (3 * b + 0) * n;
      st.size[b] = sp + (3 * b + 1) * n;
      st.last[b] = sp + (3 * b + 2) * n;
    }
    st.state = state.data_ptr<int8_t>();
    int64_t* ap = aux.data_ptr<int64_t>();
    st.nn = ap;
    st.keep = ap + n;
    st.pi = ap + 2 * n;
    st.pj = ap + 3 * n;
    st.ph = ph.data_ptr<double>();
    st.log = log.data_ptr<double>();
    st.eff = eff.data_ptr<double>();
    st.ctrl = reinterpret_cast<Ctrl*>(ctrl.data_ptr<int64_t>());
    st.n = n;
  }

  // The square matrix from the condensed vector d (offset into a packed one) and the slot arrays.
  void init(const at::Tensor& d, int64_t offset, cudaStream_t stream) {
    const int64_t n = st.n;
    const int64_t sq_blocks = std::min<int64_t>((n * n + 255) / 256, 65535 * 8);
    if (d.scalar_type() == at::kDouble) {
      square_kernel<double, T>
          <<<sq_blocks, 256, 0, stream>>>(d.data_ptr<double>() + offset, st.S[0], n);
    } else {
      square_kernel<float, T><<<sq_blocks, 256, 0, stream>>>(d.data_ptr<float>() + offset, st.S[0], n);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    init_slots_kernel<<<(n + 255) / 256, 256, 0, stream>>>(st.rep[0], st.size[0], st.last[0],
                                                           st.state, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // The merge log to the host, stable sort by (effective height, discovery order), scipy's label().
  // Writes Z (host, (n-1) x 4) and the statistics.
  void finish(double* z, int64_t* stats, const char* op) const {
    const int64_t n = st.n;
    const at::Tensor ctrl_h = ctrl.cpu();
    const Ctrl* c = reinterpret_cast<const Ctrl*>(ctrl_h.data_ptr<int64_t>());
    TORCH_CHECK(c->error == 0 && c->merges == n - 1, op, ": a round found no reciprocal pair after ",
                c->merges, " merges (non-finite distances after an update?)");
    const at::Tensor log_h = log.cpu();
    const at::Tensor eff_h = eff.cpu();
    sort_and_label(log_h.data_ptr<double>(), 3, eff_h.data_ptr<double>(), n, z);
    stats[0] = c->rounds;
    stats[1] = c->compactions;
    stats[2] = c->widest;
  }
};

template <int M, typename T>
void launch_rounds(StateT<T>& st, cudaStream_t stream, int device) {
  int sms = 0, per_sm = 0, coop = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
  TORCH_CHECK(coop, "simprune::linkage_cuda: the device does not support cooperative launches");
  C10_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, rounds_kernel<M, T>, kThreads, 0));
  TORCH_CHECK(per_sm > 0, "simprune::linkage_cuda: the rounds kernel cannot be resident");
  // Enough blocks for one warp per row of the first pass, at most what is co-resident.
  const int64_t want = (st.n * 32 + kThreads - 1) / kThreads;
  const int blocks =
      st.n <= kSoloMax ? 1 : static_cast<int>(std::min<int64_t>(int64_t{sms} * per_sm, want));
  void* args[] = {&st};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(rounds_kernel<M, T>),
                                             dim3(blocks), dim3(kThreads), args, 0, stream));
}

template <int M>
void launch_grouped(const StateT<double>* states, int64_t groups, cudaStream_t stream) {
  grouped_rounds_kernel<M><<<static_cast<unsigned>(groups), kThreads, 0, stream>>>(states);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <template <int> class F, typename... A>
void dispatch(int meth, A&&... a) {
  switch (meth) {
    case kSingle:
      return F<kSingle>::run(std::forward<A>(a)...);
    case kComplete:
      return F<kComplete>::run(std::forward<A>(a)...);
    case kAverage:
      return F<kAverage>::run(std::forward<A>(a)...);
    case kWeighted:
      return F<kWeighted>::run(std::forward<A>(a)...);
    default:
      return F<kWard>::run(std::forward<A>(a)...);
  }
}
template <int M>
struct LaunchOne {
  template <typename T>
  static void run(StateT<T>& st, cudaStream_t s, int dev) {
    launch_rounds<M, T>(st, s, dev);
  }
};
template <int M>
struct LaunchGrouped {
  static void run(const StateT<double>* st, int64_t g, cudaStream_t s) {
    launch_grouped<M>(st, g, s);
  }
};

template <typename T>
std::tuple<at::Tensor, at::Tensor> rounds_cuda(const at::Tensor& d_in, int meth, const char* op) {
  const int64_t n = check_input(d_in, op);
  const c10::cuda::CUDAGuard guard(d_in.device());
  at::Tensor stats = at::zeros({3}, at::TensorOptions().dtype(at::kLong));
  if (n < 2) return {at::empty({0, 4}, d_in.options().dtype(at::kDouble)), stats.to(d_in.device())};
  check_memory(bytes_needed(n, sizeof(T)), n, d_in.device(), op, sizeof(T));
  check_values(d_in, op, sizeof(T) == 4);
  const at::Tensor d = d_in.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  ProblemT<T> prob(n, d.options());
  prob.init(d, 0, stream);
  dispatch<LaunchOne>(meth, prob.st, stream.stream(), static_cast<int>(d.device().index()));
  at::Tensor Z = at::empty({n - 1, 4}, at::TensorOptions().dtype(at::kDouble));
  prob.finish(Z.data_ptr<double>(), stats.data_ptr<int64_t>(), op);
  return {Z.to(d_in.device()), stats.to(d_in.device())};
}

std::tuple<at::Tensor, at::Tensor> linkage_rounds_cuda(const at::Tensor& d_in,
                                                       const std::string& method,
                                                       std::optional<at::ScalarType> storage) {
  const char* op = "simprune::linkage_cuda";
  const int meth = parse_method_cuda(method, op);
  return parse_storage_cuda(storage, op) ? rounds_cuda<float>(d_in, meth, op)
                                         : rounds_cuda<double>(d_in, meth, op);
}

// Single linkage: Boruvka, then the stable sort by height and scipy's label(). stats = (iterations,
// 0, most edges in one iteration). T: the storage type of the square matrix.
template <typename T>
std::tuple<at::Tensor, at::Tensor> linkage_boruvka_cuda(const at::Tensor& d_in) {
  const char* op = "simprune::linkage_cuda";
  const int64_t n = check_input(d_in, op);
  const c10::cuda::CUDAGuard guard(d_in.device());
  at::Tensor stats = at::zeros({3}, at::TensorOptions().dtype(at::kLong));
  if (n < 2) return {at::empty({0, 4}, d_in.options().dtype(at::kDouble)), stats.to(d_in.device())};
  check_memory(static_cast<int64_t>(sizeof(T)) * n * n + 96 * n + 1024, n, d_in.device(), op,
               sizeof(T));
  check_values(d_in, op, sizeof(T) == 4);
  const at::Tensor d = d_in.contiguous();
  const auto f64 = d.options().dtype(at::kDouble);
  const auto i64 = d.options().dtype(at::kLong);
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor S = at::empty({n * n}, d.options().dtype(c10::CppTypeToScalarType<T>::value));
  const int64_t sq_blocks = std::min<int64_t>((n * n + 255) / 256, 65535 * 8);
  if (d.scalar_type() == at::kDouble) {
    square_kernel<double, T><<<sq_blocks, 256, 0, stream>>>(d.data_ptr<double>(), S.data_ptr<T>(), n);
  } else {
    square_kernel<float, T><<<sq_blocks, 256, 0, stream>>>(d.data_ptr<float>(), S.data_ptr<T>(), n);
  }
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
    boruvka_jump_kernel<<<lin_blocks, 256, 0, stream>>>(parent, root, n);
    boruvka_relabel_kernel<<<lin_blocks, 256, 0, stream>>>(comp.data_ptr<int64_t>(), root, n);
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
  return {Z.to(d_in.device()), stats.to(d_in.device())};
}

at::Tensor linkage_cuda(const at::Tensor& d, const std::string& method, const std::string& mode,
                        std::optional<at::ScalarType> storage) {
  TORCH_CHECK_VALUE(mode == "exact" || mode == "strict", "simprune::linkage_cuda: unknown mode '",
                    mode, "'; expected 'exact' or 'strict'");
  const bool fp32 = parse_storage_cuda(storage, "simprune::linkage_cuda");
  TORCH_CHECK_VALUE(!(mode == "strict" && fp32),
                    "simprune::linkage_cuda: mode='strict' (bitwise scipy) needs float64 storage; "
                    "storage=torch.float32 is an 'exact'-mode option");
  if (mode == "strict") {
    // scipy's nn_chain / Prim replayed in one thread block (linkage_strict.cu): bitwise scipy.
    const char* op = "simprune::linkage_cuda";
    const int meth = parse_method_cuda(method, op);
    const int64_t n = check_input(d, op);
    const c10::cuda::CUDAGuard guard(d.device());
    if (n < 2) return at::empty({0, 4}, d.options().dtype(at::kDouble));
    check_memory_strict(n, d.device(), op);  // before the values check, which allocates O(n^2)
    check_values(d, op);
    return linkage_strict_cuda(d.contiguous(), meth, n, op);
  }
  if (method == "single") {
    return std::get<0>(fp32 ? linkage_boruvka_cuda<float>(d) : linkage_boruvka_cuda<double>(d));
  }
  return std::get<0>(linkage_rounds_cuda(d, method, storage));
}

// Many independent problems (e.g. every layer of a CNN) in one launch, one block each. d is the
// concatenation of the condensed vectors; the result the concatenation of the Z matrices.
at::Tensor linkage_batched_cuda(const at::Tensor& d, at::IntArrayRef sizes,
                                const std::string& method) {
  const char* op = "simprune::linkage_batched_cuda";
  const int meth = parse_method_cuda(method, op);
  TORCH_CHECK_VALUE(d.dim() == 1, op, ": expected the 1-D concatenation of condensed vectors");
  TORCH_CHECK_TYPE(d.scalar_type() == at::kFloat || d.scalar_type() == at::kDouble, op,
                   ": distances must be float32 or float64, got ", d.scalar_type());
  TORCH_CHECK(d.is_cuda(), op, ": the cuda backend needs a CUDA tensor, got one on ", d.device());
  int64_t total = 0, rows = 0, need = 0, biggest = 0;
  for (const int64_t n : sizes) {
    TORCH_CHECK_VALUE(n >= 1, op, ": every problem needs n >= 1 observations, got ", n);
    total += n * (n - 1) / 2;
    rows += n - 1;
    if (n >= 2) need += bytes_needed(n);
    biggest = std::max(biggest, n);
  }
  TORCH_CHECK_VALUE(total == d.numel(), op, ": the sizes need ", total,
                    " condensed distances in all, got ", d.numel());
  const c10::cuda::CUDAGuard guard(d.device());
  at::Tensor Z = at::empty({rows, 4}, at::TensorOptions().dtype(at::kDouble));
  if (rows == 0) return Z.to(d.device());
  check_memory(need, biggest, d.device(), op);
  check_values(d, op);
  const at::Tensor dc = d.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  std::vector<ProblemT<double>> probs;
  std::vector<int64_t> zrow;
  probs.reserve(sizes.size());
  int64_t off = 0, zr = 0;
  for (const int64_t n : sizes) {
    if (n >= 2) {
      probs.emplace_back(n, dc.options());
      probs.back().init(dc, off, stream);
      zrow.push_back(zr);
    }
    off += n * (n - 1) / 2;
    zr += n - 1;
  }
  // The States go to the device in one copy (the kernel reads states[blockIdx.x]).
  const int64_t g = static_cast<int64_t>(probs.size());
  using State = StateT<double>;
  at::Tensor host = at::empty({g * static_cast<int64_t>(sizeof(State))},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  State* hs = reinterpret_cast<State*>(host.data_ptr<uint8_t>());
  for (int64_t i = 0; i < g; ++i) hs[i] = probs[i].st;
  const at::Tensor dev_states = host.to(d.device(), /*non_blocking=*/true);
  dispatch<LaunchGrouped>(meth, reinterpret_cast<const State*>(dev_states.data_ptr<uint8_t>()), g,
                          stream.stream());
  int64_t stats[3];
  for (int64_t i = 0; i < g; ++i)
    probs[i].finish(Z.data_ptr<double>() + 4 * zrow[i], stats, op);
  return Z.to(d.device());
}

}  // namespace
}  // namespace linkage
}  // namespace simprune

TORCH_LIBRARY_IMPL(simprune, CUDA, m) {
  m.impl("linkage_cuda", &simprune::linkage::linkage_cuda);
  m.impl("linkage_rounds_cuda", &simprune::linkage::linkage_rounds_cuda);
  m.impl("linkage_batched_cuda", &simprune::linkage::linkage_batched_cuda);
}

#else
#pragma message("simprune: csrc/cuda/linkage.cu skipped: torch's headers need -std=c++20")
#endif
