// Round-synchronous reciprocal-nearest-neighbour linkage on the GPU (linkage.md section 7.3, "simpler
// first version"), host-free: the exact path of simprune::linkage_cuda for complete, average,
// weighted and ward, simprune::linkage_rounds_cuda (every reducible method, with statistics) and
// simprune::linkage_batched_cuda (the ops: csrc/cuda/linkage.cpp).
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
// Batched small layers (linkage.md 7.5): the same rounds, one block per problem, every problem in one
// ordinary launch. Single linkage runs here too (exact; linkage_cuda sends it to Boruvka instead,
// linkage_boruvka.cu). All indices are int64 (n^2 > 2^31 at n = 46,341).
// SIMPRUNE_CUDA_DEVICE_ONLY (with SIMPRUNE_HOST_HARNESS, which leaves out the host code): the
// kernels alone, without torch's headers (tests/test_linkage_cuda.py reads ptxas' registers/spills).
#ifndef SIMPRUNE_CUDA_DEVICE_ONLY
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#endif
#include <cooperative_groups.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#ifndef SIMPRUNE_CUDA_DEVICE_ONLY
#include "linkage_cuda.h"
#include "simprune/host_common.h"
#endif
#include "linkage_device.cuh"
#include "simprune/linkage_common.h"

namespace cg = cooperative_groups;

namespace simprune {
namespace linkage {
namespace {

constexpr int64_t kSoloMax = 512;  // width at which block 0 finishes alone

// Device-side control block: written by block 0 thread 0, read by every block after a barrier.
struct Ctrl {
  int64_t np;       // pairs found this round
  int64_t error;    // 1: a round found no reciprocal pair (non-finite values after an update)
  int64_t rounds;
  int64_t compactions;
  int64_t widest;
  int64_t merges;
};

// A grid-stride walk over a rows x cols index space in row-major order -- the same (row, col)
// sequence as `for (t = start; t < rows * cols; t += stride) f(t / cols, t % cols)` -- with two 64-bit
// divisions per thread instead of one per element (a 64-bit division is a ~70-instruction
// subroutine on the GPU, and it kept registers busy in every phase below).
template <typename F>
__device__ __forceinline__ void for_each_2d(int start, int stride, int64_t rows, int64_t cols,
                                            F&& f) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t dr = stride / cols, dc = stride - dr * cols;
  int64_t r = start / cols, c = start - r * cols;
  while (r < rows) {
    f(r, c);
    r += dr;
    c += dc;
    if (c >= cols) {
      c -= cols;
      ++r;
    }
  }
}

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

// The rounds of one linkage. Cooperative launch (grouped = false): the whole grid works on one
// matrix with grid barriers, then block 0 alone below kSoloMax (a one-block grid is solo from the
// start). Grouped launch (grouped = true, an ordinary launch): every block runs its own problem solo.
template <int M, typename T>
__device__ void run_rounds(const StateT<T>& st, bool grouped) {
  cg::grid_group grid = cg::this_grid();  // synchronised only in cooperative, non-solo mode
  __shared__ int64_t warp_sums[kWarps + 1];
  const int64_t n = st.n;
  // Loop state kept to a minimum (registers: rounds_kernel is bounded to 64 per thread for two
  // blocks per SM): the active count is n - k, and the statistics live in st.ctrl, counted by the
  // leader's thread 0 (zero-initialised by the host).
  int64_t m = n, k = 0;
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

  while (n - k > 1) {
    if (!solo && m <= kSoloMax) {  // every block takes this decision at the same point
      solo = true;
      if (!leader) return;
    }
    // (32-bit: at most 2^31 threads; every product with them below is widened to int64.)
    const int start = solo ? threadIdx.x : blockIdx.x * kThreads + threadIdx.x;
    const int stride = solo ? kThreads : gridDim.x * kThreads;
    T* S = st.S[buf];
    int64_t* rep = st.rep[buf];
    int64_t* size = st.size[buf];
    int64_t* last = st.last[buf];

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
        Ctrl* c = st.ctrl;
        c->np = base;
        c->rounds += 1;
        c->widest = base > c->widest ? base : c->widest;
        if (base == 0) c->error = 1;
      }
    }
    sync();
    const int64_t np = *static_cast<volatile int64_t*>(&st.ctrl->np);
    if (np == 0) break;  // every block reads the same value: a consistent exit

    // ---- C. Lance-Williams: phase 1 (columns outside the pairs) and phase 2 (between new clusters)
    for_each_2d(start, stride, np, m, [&](int64_t p, int64_t c) {
      if (st.state[c] != 0) return;
      const int64_t i = st.pi[p], j = st.pj[p];
      const T v = static_cast<T>(
          lance_williams<M>(S[i * m + c], S[j * m + c], st.ph[p], size[i], size[j], size[c]));
      S[i * m + c] = v;
      // The mirror write is strided (one sector per element): with the full symmetric matrix it
      // cannot be coalesced -- the np rows i of a round are scattered, so column i's entries of
      // neighbouring c lie m apart whatever the thread mapping. Keeping only one triangle would move
      // the same scatter into phase A's row reads. Its cost (2 np m scattered stores a round against
      // phase A's m^2 coalesced reads) is to be measured on the first GPU run.
      S[c * m + i] = v;
    });
    for_each_2d(start, stride, np, np, [&](int64_t p, int64_t q) {
      if (q <= p) return;
      const int64_t ip = st.pi[p], jp = st.pj[p], iq = st.pi[q], jq = st.pj[q];
      // The intermediate (merge p first) stays in double; only the stored value is rounded.
      const T v = static_cast<T>(lance_williams_pair<M>(S[ip * m + iq], S[jp * m + iq],
                                                        S[ip * m + jq], S[jp * m + jq], st.ph[p],
                                                        st.ph[q], size[ip], size[jp], size[iq],
                                                        size[jq]));
      S[ip * m + iq] = v;
      S[iq * m + ip] = v;
    });
    sync();

    // ---- D. bookkeeping: sizes, states, dead rows and columns poisoned
    for (int64_t t = start; t < np; t += stride) {
      const int64_t i = st.pi[t], j = st.pj[t];
      size[i] += size[j];
      size[j] = 0;
      st.state[i] = 0;
      st.state[j] = 2;
    }
    for_each_2d(start, stride, np, m, [&](int64_t p, int64_t c) {
      const int64_t j = st.pj[p];
      S[j * m + c] = kInfT;
      // Column c's own row write covers S[c][j] when c dies this round too (c = pj of its pair:
      // nn[c] < c and nn[nn[c]] == c; nn is not written in this phase): writing it here as well
      // was a second write to the same word in one barrier interval (a data race, found by
      // csrc/harness under ThreadSanitizer; same value +inf, so the results do not change).
      const int64_t nc = st.nn[c];
      if (!(nc >= 0 && nc < c && st.nn[nc] == c)) S[c * m + j] = kInfT;
    });
    k += np;
    sync();

    // ---- E. compaction when the active count has halved (stable: slot order is kept)
    const int64_t active = n - k;
    if (active > 1 && 2 * active <= m) {
      if (leader && threadIdx.x == 0) st.ctrl->compactions += 1;
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
      for_each_2d(start, stride, a, a, [&](int64_t x, int64_t y) {
        dst[x * a + y] = S[st.keep[x] * m + st.keep[y]];
      });
      for (int64_t t = start; t < a; t += stride) st.state[t] = 0;
      buf = nb;
      m = a;
      sync();
    }
  }
  if (leader && threadIdx.x == 0) st.ctrl->merges = k;
}

// Blocks per SM the rounds kernel is compiled for (__launch_bounds__' minimum: a register cap of
// 65536 / (512 x blocks)). Two (64 registers, 32 warps per SM) where that costs no spill: single,
// complete, weighted. average and ward evaluate an fp64 division (ward also a square root) whose slow
// path is a subroutine call: capped at 64 registers they spill 44-80 bytes (nvcc 13.0, sm_90), so
// they keep no minimum (84 registers, one block of 16 warps per SM). launch_rounds sizes the
// cooperative grid with the occupancy API, which sees the compiled figures.
template <int M>
constexpr int kRoundsMinBlocks = (M == kAverage || M == kWard) ? 0 : 2;  // 0: no minimum

template <int M, typename T>
__global__ void __launch_bounds__(kThreads, kRoundsMinBlocks<M>) rounds_kernel(StateT<T> st) {
  run_rounds<M, T>(st, false);
}

// Batched small layers (linkage.md 7.5): one block per problem, all problems in one launch.
template <int M>
__global__ void __launch_bounds__(kThreads) grouped_rounds_kernel(const StateT<double>* states) {
  run_rounds<M, double>(states[blockIdx.x], true);
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

#ifndef SIMPRUNE_HOST_HARNESS  // csrc/harness compiles the device code above as host C++
// ---- host side ---------------------------------------------------------------------------------------
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
    launch_square(d.data_ptr(), d.scalar_type() == at::kDouble, offset, st.S[0], n, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    init_slots_kernel<<<(n + 255) / 256, 256, 0, stream>>>(st.rep[0], st.size[0], st.last[0],
                                                           st.state, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // The control block and merge log, copied to pinned host memory without a synchronisation (the
  // batched path queues every problem's copies, then synchronises once).
  struct Host {
    at::Tensor ctrl, log, eff;
  };
  Host to_host_async() const {
    auto pinned = [](const at::Tensor& t) {
      at::Tensor h = at::empty(t.sizes(), t.options().device(at::kCPU).pinned_memory(true));
      h.copy_(t, /*non_blocking=*/true);
      return h;
    };
    return {pinned(ctrl), pinned(log), pinned(eff)};
  }

  // After the stream has reached the copies of to_host_async: stable sort by (effective height,
  // discovery order), scipy's label(). Writes Z (host, (n-1) x 4) and the statistics.
  void finish(const Host& h, double* z, int64_t* stats, const char* op) const {
    const int64_t n = st.n;
    const Ctrl* c = reinterpret_cast<const Ctrl*>(h.ctrl.template data_ptr<int64_t>());
    TORCH_CHECK(c->error == 0 && c->merges == n - 1, op, ": a round found no reciprocal pair after ",
                c->merges, " merges (non-finite distances after an update?)");
    sort_and_label(h.log.template data_ptr<double>(), 3, h.eff.template data_ptr<double>(), n, z);
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
  // The occupancy API sees the compiled registers: per_sm is kRoundsMinBlocks<M> (2 for single,
  // complete, weighted; 1 for average and ward) on a device with sm_90's 64K registers per SM.
  // Enough blocks for one warp per row of the first pass, at most what is co-resident.
  const int64_t want = (st.n * 32 + kThreads - 1) / kThreads;
  const int blocks =
      st.n <= kSoloMax ? 1 : static_cast<int>(std::min<int64_t>(int64_t{sms} * per_sm, want));
  void* args[] = {&st};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(rounds_kernel<M, T>),
                                             dim3(blocks), dim3(kThreads), args, 0, stream));
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> rounds_typed(const at::Tensor& d, int meth, int64_t n,
                                                const char* op) {
  auto stream = at::cuda::getCurrentCUDAStream();
  ProblemT<T> prob(n, d.options());
  prob.init(d, 0, stream);
  const int device = static_cast<int>(d.device().index());
  with_reducible_method(meth, [&](auto m) {
    launch_rounds<decltype(m)::value, T>(prob.st, stream.stream(), device);
  });
  const auto host = prob.to_host_async();
  stream.synchronize();
  at::Tensor Z = at::empty({n - 1, 4}, at::TensorOptions().dtype(at::kDouble));
  at::Tensor stats = at::zeros({3}, at::TensorOptions().dtype(at::kLong));
  prob.finish(host, Z.data_ptr<double>(), stats.data_ptr<int64_t>(), op);
  return {Z.to(d.device()), stats.to(d.device())};
}

#endif  // SIMPRUNE_HOST_HARNESS
}  // namespace

#ifndef SIMPRUNE_HOST_HARNESS
int64_t rounds_bytes_needed(int64_t n, int64_t elem) {
  const int64_t h = n / 2;
  return elem * (n * n + std::max<int64_t>(h * h, 1)) + n * (2 * 3 * 8 + 1 + 4 * 8 + 8) +
         std::max<int64_t>(n - 1, 1) * 8 * 4 + 1024;
}

std::tuple<at::Tensor, at::Tensor> rounds_cuda(const at::Tensor& d, int method, int64_t n,
                                               bool fp32, const char* op) {
  return fp32 ? rounds_typed<float>(d, method, n, op) : rounds_typed<double>(d, method, n, op);
}

at::Tensor rounds_batched_cuda(const at::Tensor& d, at::IntArrayRef sizes, int method,
                               const char* op) {
  int64_t rows = 0;
  for (const int64_t n : sizes) rows += n - 1;
  at::Tensor Z = at::empty({rows, 4}, at::TensorOptions().dtype(at::kDouble));
  auto stream = at::cuda::getCurrentCUDAStream();
  std::vector<ProblemT<double>> probs;
  std::vector<int64_t> zrow;
  probs.reserve(sizes.size());
  int64_t off = 0, zr = 0;
  for (const int64_t n : sizes) {
    if (n >= 2) {
      probs.emplace_back(n, d.options());
      probs.back().init(d, off, stream);
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
  const State* states = reinterpret_cast<const State*>(dev_states.data_ptr<uint8_t>());
  with_reducible_method(method, [&](auto m) {
    grouped_rounds_kernel<decltype(m)::value>
        <<<static_cast<unsigned>(g), kThreads, 0, stream.stream()>>>(states);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Every problem's results to pinned host memory, then ONE synchronisation (it used to be three
  // synchronous copies per problem).
  std::vector<ProblemT<double>::Host> hosts;
  hosts.reserve(probs.size());
  for (const auto& p : probs) hosts.push_back(p.to_host_async());
  stream.synchronize();
  int64_t stats[3];
  for (int64_t i = 0; i < g; ++i)
    probs[i].finish(hosts[i], Z.data_ptr<double>() + 4 * zrow[i], stats, op);
  return Z.to(d.device());
}
#endif  // SIMPRUNE_HOST_HARNESS

}  // namespace linkage
}  // namespace simprune
