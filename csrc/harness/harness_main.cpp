// Driver of the host-thread concurrency harness (cuda_host_shim.h says what is and is not emulated):
// runs the CUDA linkage kernels of csrc/cuda -- included unchanged, with SIMPRUNE_HOST_HARNESS
// leaving out their ATen host code -- on host threads, and writes Z.
//
//   harness ALGO METHOD STORAGE BLOCKS IN OUT
//     ALGO     rounds   the cooperative rounds kernel (linkage_rounds.cu), BLOCKS blocks at most
//                       (one block below kSoloMax, as launch_rounds sizes it);
//              grouped  the batched kernel: every problem of IN in one launch, one block each
//                       (blocks run one after the other: see __shared__ in cuda_host_shim.h);
//              boruvka  single linkage, Borůvka (linkage_boruvka.cu), the grid-stride kernels on
//                       BLOCKS blocks, the hook kernel on one;
//              strict   strict mode (linkage_strict.cu): nn_chain / Prim in one block.
//     METHOD   single | complete | average | weighted | ward
//     STORAGE  f64 | f32 (the matrix's storage type; rounds and boruvka)
//     IN       int64 g, then g problems: int64 n, then n(n-1)/2 float64 (scipy's pdist order)
//     OUT      per problem: Z ((n-1) x 4 float64), then int64 stats[3] (rounds: rounds,
//              compactions, widest; boruvka: iterations, 0, most edges; else zeros)
//
//   harness selftest race|block|warp    a kernel with a planted defect (run_selftest): the harness
//                                        must report it (exit 4, or a ThreadSanitizer report)
//
// Block size: SIMPRUNE_HOST_HARNESS_THREADS (rounds, Boruvka) and SIMPRUNE_HOST_HARNESS_STRICT_THREADS
// (strict), set at compile time (tests/test_concurrency_harness.py: 64).
//
// The host side below mirrors the host code of each .cu file (buffers, launch order, the loop of
// Borůvka, the checks after the kernel, the sort and relabel); a change to that code must be
// mirrored here. Buffers that the GPU code would find uninitialised are filled with NaN / -7 so
// that a read before a write shows in Z.
#include "cuda_host_shim.h"

// The kernels, unchanged (their host launch code is left out by SIMPRUNE_HOST_HARNESS).
#include "../cuda/linkage_boruvka.cu"
#include "../cuda/linkage_rounds.cu"
#include "../cuda/linkage_strict.cu"

#include <cinttypes>
#include <cstdio>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace {

using simprune_harness::fail;
using simprune_harness::launch;
namespace lk = simprune::linkage;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int64_t kJunk = -7;
// Grid-stride kernels (square, init, Boruvka's per-vertex kernels): this many threads per block.
constexpr unsigned kLinThreads = 64;

struct Problem {
  int64_t n = 0;
  std::vector<double> d;  // condensed
};

struct Result {
  std::vector<double> Z;
  int64_t stats[3] = {0, 0, 0};
};

template <typename T>
void square(const Problem& p, T* S, unsigned blocks) {
  const double* d = p.d.data();
  const int64_t n = p.n;
  launch(blocks, kLinThreads, false, false,
         [&] { lk::square_kernel<double, T>(d, S, n); });
}

// ---- rounds (linkage_rounds.cu: ProblemT, launch_rounds, finish) -------------------------------
template <typename T>
struct RoundsBuffers {
  std::vector<T> S0, S1;
  std::vector<int64_t> slots, aux;
  std::vector<int8_t> state;
  std::vector<double> ph, log, eff;
  lk::Ctrl ctrl{};
  lk::StateT<T> st{};

  explicit RoundsBuffers(int64_t n) {
    const int64_t h = n / 2;
    const T nan = std::numeric_limits<T>::quiet_NaN();
    S0.assign(n * n, nan);
    S1.assign(std::max<int64_t>(h * h, 1), nan);
    slots.assign(6 * n, kJunk);
    state.assign(n, -7);
    aux.assign(4 * n, kJunk);
    ph.assign(n, kNaN);
    log.assign(3 * (n - 1), kNaN);
    eff.assign(n - 1, kNaN);
    st.S[0] = S0.data();
    st.S[1] = S1.data();
    for (int b = 0; b < 2; ++b) {
      st.rep[b] = slots.data() + (3 * b + 0) * n;
      st.size[b] = slots.data() + (3 * b + 1) * n;
      st.last[b] = slots.data() + (3 * b + 2) * n;
    }
    st.state = state.data();
    st.nn = aux.data();
    st.keep = aux.data() + n;
    st.pi = aux.data() + 2 * n;
    st.pj = aux.data() + 3 * n;
    st.ph = ph.data();
    st.log = log.data();
    st.eff = eff.data();
    st.ctrl = &ctrl;
    st.n = n;
  }

  void init(const Problem& p, unsigned blocks) {
    square(p, st.S[0], blocks);
    int64_t *rep = st.rep[0], *size = st.size[0], *last = st.last[0];
    int8_t* state_p = st.state;
    const int64_t n = st.n;
    launch(blocks, kLinThreads, false, false,
           [&] { lk::init_slots_kernel(rep, size, last, state_p, n); });
  }

  Result finish() const {
    const int64_t n = st.n;
    if (ctrl.error != 0 || ctrl.merges != n - 1) {
      std::fprintf(stderr, "harness: rounds: a round found no reciprocal pair after %" PRId64
                   " merges (n = %" PRId64 ")\n", ctrl.merges, n);
      std::_Exit(6);
    }
    Result r;
    r.Z.assign(4 * (n - 1), kNaN);
    lk::sort_and_label(log.data(), 3, eff.data(), n, r.Z.data());
    r.stats[0] = ctrl.rounds;
    r.stats[1] = ctrl.compactions;
    r.stats[2] = ctrl.widest;
    return r;
  }
};

template <int M, typename T>
Result run_rounds(const Problem& p, unsigned max_blocks) {
  RoundsBuffers<T> b(p.n);
  b.init(p, max_blocks);
  // launch_rounds: one block per 16 rows of the first pass at most, one block below kSoloMax.
  const int64_t want = (p.n * 32 + lk::kThreads - 1) / lk::kThreads;
  const unsigned blocks =
      p.n <= lk::kSoloMax ? 1u : static_cast<unsigned>(std::min<int64_t>(max_blocks, want));
  lk::StateT<T> st = b.st;
  launch(blocks, lk::kThreads, true, false, [&] { lk::rounds_kernel<M, T>(st); });
  return b.finish();
}

template <int M>
std::vector<Result> run_grouped(const std::vector<Problem>& ps, unsigned blocks) {
  // rounds_batched_cuda: problems with n >= 2 get a block each, all in one launch.
  std::vector<std::unique_ptr<RoundsBuffers<double>>> bufs;
  std::vector<lk::StateT<double>> states;
  for (const Problem& p : ps) {
    if (p.n < 2) continue;
    bufs.push_back(std::make_unique<RoundsBuffers<double>>(p.n));
    bufs.back()->init(p, blocks);
    states.push_back(bufs.back()->st);
  }
  const lk::StateT<double>* sp = states.data();
  launch(static_cast<unsigned>(states.size()), lk::kThreads, false, /*sequential_blocks=*/true,
         [&] { lk::grouped_rounds_kernel<M>(sp); });
  std::vector<Result> out;
  size_t g = 0;
  for (const Problem& p : ps) {
    if (p.n < 2) {
      out.emplace_back();
      continue;
    }
    out.push_back(bufs[g]->finish());
    out.back().stats[0] = out.back().stats[1] = out.back().stats[2] = 0;
    ++g;
  }
  return out;
}

// ---- Borůvka (linkage_boruvka.cu: boruvka_typed) ------------------------------------------------
template <typename T>
Result run_boruvka(const Problem& p, unsigned blocks) {
  const int64_t n = p.n;
  std::vector<T> Sv(n * n, std::numeric_limits<T>::quiet_NaN());
  T* S = Sv.data();
  square(p, S, blocks);
  std::vector<int64_t> comp(n), iv(4 * n, kJunk), cw(n, kJunk), ctrl(2, 0);
  for (int64_t i = 0; i < n; ++i) comp[i] = i;
  std::vector<double> w(n, kNaN), log(3 * (n - 1), kNaN);
  int64_t* u = iv.data();
  int64_t* parent = u + n;
  int64_t* root = u + 2 * n;
  auto* ck = reinterpret_cast<unsigned long long*>(u + 3 * n);
  auto* cwp = reinterpret_cast<unsigned long long*>(cw.data());
  int64_t* cp = comp.data();
  double* wp = w.data();
  double* lp = log.data();
  int64_t* ctl = ctrl.data();
  int64_t k = 0, iters = 0;
  while (k < n - 1) {
    ++iters;
    launch(blocks, kLinThreads, false, false,
           [&] { lk::boruvka_rowmin_kernel<T>(S, cp, wp, u, n); });
    launch(blocks, kLinThreads, false, false, [&] { lk::boruvka_reset_kernel(cwp, ck, n); });
    launch(blocks, kLinThreads, false, false,
           [&] { lk::boruvka_component_kernel(cp, wp, u, cwp, ck, n, 1); });
    launch(blocks, kLinThreads, false, false,
           [&] { lk::boruvka_component_kernel(cp, wp, u, cwp, ck, n, 2); });
    launch(1, lk::kThreads, false, false,
           [&] { lk::boruvka_hook_kernel<T>(S, cp, ck, parent, lp, ctl, n); });
    // Pointer doubling, ping-pong between parent and root; `label` ends on the last written one.
    int64_t* label = parent;
    int64_t* spare = root;
    for (int s = lk::boruvka_jump_steps(n - k); s > 0; --s) {
      launch(blocks, kLinThreads, false, false,
             [&] { lk::boruvka_jump_step_kernel(label, spare, n); });
      std::swap(label, spare);
    }
    launch(blocks, kLinThreads, false, false, [&] { lk::boruvka_relabel_kernel(cp, label, n); });
    const int64_t k_new = ctrl[0];
    if (k_new <= k) {
      std::fprintf(stderr, "harness: Boruvka found no edge with %" PRId64 " components left\n",
                   n - k);
      std::_Exit(6);
    }
    k = k_new;
  }
  std::vector<double> heights(n - 1);
  for (int64_t i = 0; i < n - 1; ++i) heights[i] = log[3 * i + 2];
  Result r;
  r.Z.assign(4 * (n - 1), kNaN);
  lk::sort_and_label(log.data(), 3, heights.data(), n, r.Z.data());
  r.stats[0] = iters;
  r.stats[2] = ctrl[1];
  return r;
}

// ---- strict (linkage_strict.cu: linkage_strict_cuda) -------------------------------------------
Result run_strict(const Problem& p, int method, unsigned blocks) {
  const int64_t n = p.n;
  std::vector<double> Sv(n * n, kNaN), log(3 * (n - 1), kNaN);
  double* S = Sv.data();
  double* lg = log.data();
  square(p, S, blocks);
  constexpr unsigned T = lk::strict::kStrictThreads;
  if (method == lk::kSingle) {
    std::vector<double> dmin(n, std::numeric_limits<double>::infinity());
    std::vector<int32_t> merged(n, 0);
    double* dm = dmin.data();
    int32_t* mg = merged.data();
    launch(1, T, false, false, [&] { lk::strict::mst_single_strict_kernel(S, dm, mg, lg, n); });
  } else {
    std::vector<int64_t> size(n, 1), chain(n, kJunk);
    int64_t* sz = size.data();
    int64_t* ch = chain.data();
    lk::with_reducible_method(method, [&](auto m) {
      constexpr int M = decltype(m)::value;
      if constexpr (M != lk::kSingle) {
        launch(1, T, false, false, [&] { lk::strict::nn_chain_strict_kernel<M>(S, sz, ch, lg, n); });
      }
    });
  }
  std::vector<double> heights(n - 1);
  for (int64_t i = 0; i < n - 1; ++i) heights[i] = log[3 * i + 2];
  Result r;
  r.Z.assign(4 * (n - 1), kNaN);
  lk::sort_and_label(log.data(), 3, heights.data(), n, r.Z.data());
  return r;
}

// ---- self-tests: kernels with a known defect, which the harness must report ---------------------
// race:        every thread writes one shared word, unsynchronised (ThreadSanitizer must report it);
// block:       the first warp of a block skips a __syncthreads that the others execute;
// warp:        odd lanes skip a __syncwarp that even lanes execute.
__global__ void selftest_race_kernel(int64_t* word) { *word = threadIdx.x; }
__global__ void selftest_block_divergence_kernel() {
  if (threadIdx.x >= 32) __syncthreads();
}
__global__ void selftest_warp_divergence_kernel() {
  if ((threadIdx.x & 1) == 0) __syncwarp();
}

int run_selftest(const std::string& which) {
  int64_t word = 0;
  if (which == "race") {
    launch(2, 64, false, false, [&] { selftest_race_kernel(&word); });
  } else if (which == "block") {
    launch(1, 64, false, false, [] { selftest_block_divergence_kernel(); });
  } else if (which == "warp") {
    launch(1, 64, false, false, [] { selftest_warp_divergence_kernel(); });
  } else {
    fail(2, "unknown self-test");
  }
  std::printf("self-test %s finished (word %lld)\n", which.c_str(), static_cast<long long>(word));
  return 0;
}

// ---- I/O ---------------------------------------------------------------------------------------
std::vector<Problem> read_problems(const char* path) {
  FILE* f = std::fopen(path, "rb");
  if (!f) fail(2, "cannot open the input file");
  int64_t g = 0;
  if (std::fread(&g, 8, 1, f) != 1 || g < 0) fail(2, "bad input: problem count");
  std::vector<Problem> ps(g);
  for (Problem& p : ps) {
    if (std::fread(&p.n, 8, 1, f) != 1 || p.n < 1) fail(2, "bad input: n");
    p.d.resize(p.n * (p.n - 1) / 2);
    if (std::fread(p.d.data(), 8, p.d.size(), f) != p.d.size()) fail(2, "bad input: distances");
  }
  std::fclose(f);
  return ps;
}

int parse_method(const std::string& m) {
  if (m == "single") return lk::kSingle;
  if (m == "complete") return lk::kComplete;
  if (m == "average") return lk::kAverage;
  if (m == "weighted") return lk::kWeighted;
  if (m == "ward") return lk::kWard;
  fail(2, "unknown method");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "selftest") return run_selftest(argv[2]);
  if (argc != 7) {
    std::fprintf(stderr, "usage: %s rounds|grouped|boruvka|strict METHOD f64|f32 BLOCKS IN OUT\n",
                 argv[0]);
    return 2;
  }
  const std::string algo = argv[1], storage = argv[3];
  const int method = parse_method(argv[2]);
  const int blocks_arg = std::atoi(argv[4]);
  if (blocks_arg < 1) fail(2, "BLOCKS must be >= 1");
  const auto blocks = static_cast<unsigned>(blocks_arg);
  if (storage != "f64" && storage != "f32") fail(2, "STORAGE must be f64 or f32");
  const bool f32 = storage == "f32";
  const std::vector<Problem> ps = read_problems(argv[5]);

  std::vector<Result> results;
  if (algo == "grouped") {
    if (f32) fail(2, "the grouped kernel has float64 storage only");
    lk::with_reducible_method(method,
                              [&](auto m) { results = run_grouped<decltype(m)::value>(ps, blocks); });
  } else {
    for (const Problem& p : ps) {
      if (p.n < 2) {
        results.emplace_back();
        continue;
      }
      if (algo == "rounds") {
        lk::with_reducible_method(method, [&](auto m) {
          constexpr int M = decltype(m)::value;
          results.push_back(f32 ? run_rounds<M, float>(p, blocks) : run_rounds<M, double>(p, blocks));
        });
      } else if (algo == "boruvka") {
        if (method != lk::kSingle) fail(2, "boruvka is single linkage");
        results.push_back(f32 ? run_boruvka<float>(p, blocks) : run_boruvka<double>(p, blocks));
      } else if (algo == "strict") {
        if (f32) fail(2, "strict mode has float64 storage only");
        results.push_back(run_strict(p, method, blocks));
      } else {
        fail(2, "unknown ALGO");
      }
    }
  }
  FILE* f = std::fopen(argv[6], "wb");
  if (!f) fail(2, "cannot open the output file");
  for (const Result& r : results) {
    if (!r.Z.empty()) std::fwrite(r.Z.data(), 8, r.Z.size(), f);
    std::fwrite(r.stats, 8, 3, f);
  }
  std::fclose(f);
  return 0;
}
