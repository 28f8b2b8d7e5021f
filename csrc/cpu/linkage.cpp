// Exact hierarchical clustering on the CPU: simprune::linkage_cpu.
//
// single:                            Prim's MST from point 0, as scipy's mst_single_linkage.
// complete/average/weighted/ward:    nearest-neighbour chain, as scipy's nn_chain (same chain start, same
//                                    candidate order, same tie rules, same Lance-Williams expression).
// Both finish with a stable sort by height and scipy's label(). The merge sequence is therefore
// scipy's own, whatever the thread count: "strict" sorts on the true heights (bitwise scipy, ties
// included); "exact" sorts on the monotone-guarded heights (linkage.md 1.3), which differs from
// scipy only when floating-point rounding makes a parent 1 ulp lower than its child -- where scipy's
// relabelling would silently build a different tree.
//
// Memory: one condensed fp64 working copy (updated in place, as scipy does) plus O(n). With
// storage=float32 the copy is float32 (half the memory): every stored distance is rounded to float32,
// Lance-Williams still evaluated in fp64 from the stored values ("exact" mode only; heights agree with
// scipy to ~1e-6 relative, trees can differ where two merges are that close).
// Parallelism: one OpenMP team for the whole run; each row scan and each Lance-Williams column update is
// split into round-robin blocks of the active-slot list, and the partial argmins are combined with the
// shared tie rule (linkage_common.h), so the result is independent of the thread count. A team
// starts only for large n and retires to one thread once the active count drops below
// kParallelMinActive (barriers would then cost more than the split saves), or when its waits show an
// oversubscribed machine (Team).
#include <ATen/ATen.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "linkage_util.h"
#include "simprune/host_common.h"
#include "simprune/linkage_common.h"

namespace simprune {
namespace linkage {
namespace {

constexpr int64_t kBlock = 512;     // active-list entries per work block (round-robin over threads)
constexpr int64_t kPrefetch = 48;   // distance of the software prefetch in the strided (column) part
// When the thread team pays (benchmarks/results/linkage_cpu_threads.md: 1 vs 2 threads vs fastcluster
// in one run on the 2-core box). A team starts only for n >= kParallelMinN (NN-chain) or
// kParallelMinNSingle (the MST, whose row scans are cheaper): measured, two threads were 0.67-0.86x
// one thread at n = 4096 and 8192 for every method, 1.39-1.66x at 16384 for complete, average and
// ward, and still 0.93x at 16384 for single. A started team retires to one thread once fewer than
// kParallelMinActive clusters are active (the rows are then short: a scan takes a few microseconds
// and the barriers around it cost more than the split saves; the active count only shrinks).
// SIMPRUNE_LINKAGE_PARALLEL_MIN_N, when set, replaces all three (the tests force the parallel paths
// at small n with it, the benchmark measures other switch-over points).
constexpr int64_t kParallelMinN = 16384;
constexpr int64_t kParallelMinNSingle = 32768;
constexpr int64_t kParallelMinActive = 4096;

struct alignas(64) Partial {
  double v;
  int64_t i;
};

// Publishes this thread's partial argmin (bv, bi) and waits for the team; thread 0 then gets the
// first minimal (value, index) of the nt partials in (v, i) -- the shared tie rule, so the result
// does not depend on the thread count -- and returns true (the others return false).
inline bool team_argmin(Team& team, std::vector<Partial>& partial, int tid, int nt, double bv,
                        int64_t bi, double* v, int64_t* i) {
  partial[tid].v = bv;
  partial[tid].i = bi;
  team.wait(tid);
  if (tid != 0) return false;
  double rv = partial[0].v;
  int64_t ri = partial[0].i;
  for (int t = 1; t < nt; ++t) {
    if (nn_better(partial[t].v, partial[t].i, rv, ri)) {
      rv = partial[t].v;
      ri = partial[t].i;
    }
  }
  *v = rv;
  *i = ri;
  return true;
}

// Argmin of D(x, a) over the active slots a in act[lo, hi) (x excluded; act is sorted, x = act[px]).
// Entries before px live in column x (strided, prefetched); entries after it in row x (contiguous).
// T: the storage type (double, or float for storage=float32); comparisons are in double.
template <typename T>
inline void scan_block(const T* D, const int64_t* roff, const int64_t* act, int64_t lo,
                       int64_t hi, int64_t x, int64_t px, double* best_v, int64_t* best_i) {
  double bv = *best_v;
  int64_t bi = *best_i;
  const int64_t mid = std::min(hi, px);
  for (int64_t p = lo; p < mid; ++p) {
    if (p + kPrefetch < mid) __builtin_prefetch(D + roff[act[p + kPrefetch]] + x);
    const int64_t a = act[p];
    const double v = static_cast<double>(D[roff[a] + x]);
    if (v < bv) {
      bv = v;
      bi = a;
    }
  }
  const T* row = D + roff[x];
  for (int64_t p = std::max(lo, px + 1); p < hi; ++p) {
    const int64_t a = act[p];
    const double v = static_cast<double>(row[a]);
    if (v < bv) {
      bv = v;
      bi = a;
    }
  }
  *best_v = bv;
  *best_i = bi;
}

template <typename T>
inline T& at_pair(T* D, const int64_t* roff, int64_t i, int64_t j) {
  return i < j ? D[roff[i] + j] : D[roff[j] + i];
}

// nn_chain. merges[4k..4k+2] = (x, y, height) in discovery order; eff[k] the guarded height.
template <int M, typename T>
void nn_chain(T* D, int64_t n, int threads, int64_t min_active, std::vector<double>& merges,
              std::vector<double>& eff) {
  std::vector<int64_t> roff(n), act(n), size(n, 1), chain(n), last(n, -1);
  for (int64_t i = 0; i < n; ++i) {
    roff[i] = row_offset(n, i);
    act[i] = i;
  }
  merges.assign(4 * (n - 1), 0.0);
  eff.assign(n - 1, 0.0);

  // Shared state, written only inside `single` blocks (their implicit barriers publish it).
  int64_t na = n, chain_len = 0, x = 0, px = 0, y = 0, k = 0;
  double current_min = 0.0;
  bool merging = false, finished = false;
  int64_t mx = 0, my = 0, mnx = 0, mny = 0;
  double mh = 0.0;
  std::vector<Partial> partial(std::max(threads, 1) + 1);

  auto start_step = [&]() {
    if (chain_len == 0) {
      chain[0] = act[0];  // a new chain starts at the lowest active slot
      chain_len = 1;
    }
    x = chain[chain_len - 1];
    px = std::lower_bound(act.begin(), act.begin() + na, x) - act.begin();
  };
  start_step();

  std::unique_ptr<Team> team;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#pragma omp single
    team = std::make_unique<Team>(omp_get_num_threads());
    const int tid = omp_get_thread_num();
    while (true) {
      // ---- row scan of the chain's top element x
      const int nt = team->size();
      double bv = std::numeric_limits<double>::infinity();
      int64_t bi = std::numeric_limits<int64_t>::max();
      for (int64_t lo = tid * kBlock; lo < na; lo += nt * kBlock) {
        scan_block(D, roff.data(), act.data(), lo, std::min(na, lo + kBlock), x, px, &bv, &bi);
      }
      double rv;
      int64_t ri;
      if (team_argmin(*team, partial, tid, nt, bv, bi, &rv, &ri)) {
        const bool has_prev = chain_len > 1;
        const int64_t prev = has_prev ? chain[chain_len - 2] : -1;
        chain_pick(has_prev, prev,
                   has_prev ? static_cast<double>(at_pair(D, roff.data(), x, prev)) : 0.0, rv, ri,
                   &y, &current_min);
        merging = has_prev && y == prev;
        if (!merging) {
          chain[chain_len++] = y;
          x = y;
          px = std::lower_bound(act.begin(), act.begin() + na, x) - act.begin();
        } else {
          // Merge x and y; the smaller slot dies, the larger keeps the new cluster (fastcluster's
          // convention, which scipy adopted).
          chain_len -= 2;
          mx = std::min(x, y);
          my = std::max(x, y);
          mnx = size[mx];
          mny = size[my];
          mh = current_min;
          merges[4 * k + 0] = static_cast<double>(mx);
          merges[4 * k + 1] = static_cast<double>(my);
          merges[4 * k + 2] = mh;
          eff[k] = effective_height(mh, last[mx] >= 0 ? eff[last[mx]] : -1.0,
                                    last[my] >= 0 ? eff[last[my]] : -1.0);
          last[my] = k;
          size[mx] = 0;
          size[my] = mnx + mny;
          const int64_t pos = std::lower_bound(act.begin(), act.begin() + na, mx) - act.begin();
          std::copy(act.begin() + pos + 1, act.begin() + na, act.begin() + pos);
          --na;
          ++k;
          finished = k == n - 1;
          if (!finished) start_step();
        }
        if (na < min_active) team->retire();  // short rows from now on: one thread is faster
        team->decide();
      }
      team->wait(tid);
      if (team->leave(tid)) break;
      if (merging) {
        // ---- Lance-Williams update of column/row my for every other active slot
        const int nt2 = team->size();
        const int64_t* r = roff.data();
        for (int64_t lo = tid * kBlock; lo < na; lo += nt2 * kBlock) {
          const int64_t hi = std::min(na, lo + kBlock);
          for (int64_t p = lo; p < hi; ++p) {
            const int64_t i = act[p];
            if (i == my) continue;
            if (p + kPrefetch < hi) {
              const int64_t f = act[p + kPrefetch];
              if (f < my) __builtin_prefetch(D + r[f] + my, 1);
              if (f < mx) __builtin_prefetch(D + r[f] + mx);
            }
            const double d_xi = i < mx ? D[r[i] + mx] : D[r[mx] + i];
            T& d_yi = i < my ? D[r[i] + my] : D[r[my] + i];
            d_yi = static_cast<T>(lance_williams<M>(d_xi, d_yi, mh, mnx, mny, size[i]));
          }
        }
        team->wait(tid);
        if (finished) break;
      }
    }
  }
}

// scipy's mst_single_linkage: Prim from point 0, first index wins ties.
template <typename T>
void mst_single(const T* D, int64_t n, int threads, int64_t min_active,
                std::vector<double>& merges) {
  std::vector<int64_t> roff(n), rest(n - 1);
  for (int64_t i = 0; i < n; ++i) roff[i] = row_offset(n, i);
  for (int64_t i = 1; i < n; ++i) rest[i - 1] = i;  // not yet merged, sorted
  std::vector<double> dmin(n, std::numeric_limits<double>::infinity());
  merges.assign(4 * (n - 1), 0.0);
  int64_t nr = n - 1, x = 0, y = 0;
  std::vector<Partial> partial(std::max(threads, 1) + 1);

  std::unique_ptr<Team> team;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#pragma omp single
    team = std::make_unique<Team>(omp_get_num_threads());
    const int tid = omp_get_thread_num();
    for (int64_t k = 0; k < n - 1; ++k) {
      const int nt = team->size();
      double bv = std::numeric_limits<double>::infinity();
      int64_t bi = std::numeric_limits<int64_t>::max();
      const int64_t* r = roff.data();
      for (int64_t lo = tid * kBlock; lo < nr; lo += nt * kBlock) {
        const int64_t hi = std::min(nr, lo + kBlock);
        for (int64_t p = lo; p < hi; ++p) {
          const int64_t i = rest[p];
          if (i < x && p + kPrefetch < hi && rest[p + kPrefetch] < x)
            __builtin_prefetch(D + r[rest[p + kPrefetch]] + x);
          const double dist = static_cast<double>(i < x ? D[r[i] + x] : D[r[x] + i]);
          if (dmin[i] > dist) dmin[i] = dist;
          if (dmin[i] < bv) {
            bv = dmin[i];
            bi = i;
          }
        }
      }
      double rv;
      int64_t ri;
      if (team_argmin(*team, partial, tid, nt, bv, bi, &rv, &ri)) {
        // scipy keeps the previous y when nothing is below +inf (infinite input; rejected earlier).
        if (rv < std::numeric_limits<double>::infinity()) y = ri;
        merges[4 * k + 0] = static_cast<double>(x);
        merges[4 * k + 1] = static_cast<double>(y);
        merges[4 * k + 2] = rv;
        const int64_t pos = std::lower_bound(rest.begin(), rest.begin() + nr, y) - rest.begin();
        if (pos < nr && rest[pos] == y) {
          std::copy(rest.begin() + pos + 1, rest.begin() + nr, rest.begin() + pos);
          --nr;
        }
        x = y;
        if (nr < min_active) team->retire();
        team->decide();
      }
      team->wait(tid);
      if (team->leave(tid)) break;
    }
  }
}

// One precision of linkage_cpu: T is the storage type of the working copy.
template <typename T>
void run_linkage(const at::Tensor& d, int m, int64_t n, int threads, int64_t min_active,
                 const char* op,
                 std::vector<double>& merges, std::vector<double>& eff) {
  if (m == kSingle) {
    // The MST only reads: the input itself when it already has the storage type, no copy.
    const at::Tensor input = checked_input<T>(d, threads, op);
    mst_single<T>(input.data_ptr<T>(), n, threads, min_active, merges);
    return;
  }
  // The NN-chain updates a copy in place, as scipy does (on huge pages, see alloc_buffer).
  BufferOf<T> work = working_copy<T>(d, threads, op);
  with_reducible_method(m, [&](auto tag) {
    constexpr int M = decltype(tag)::value;
    if constexpr (M != kSingle) nn_chain<M, T>(work.get(), n, threads, min_active, merges, eff);
  });
}

// Host bytes one call needs beyond its input: the working copy (the NN-chain's condensed copy of the
// storage type; the MST reads the input itself unless it must be converted or made contiguous), the
// O(n) vectors and the merge log.
int64_t linkage_cpu_bytes_needed(const at::Tensor& d, int m, int64_t n, bool fp32) {
  const int64_t elem = fp32 ? 4 : 8;
  const int64_t cnt = d.numel();
  const bool same_type = d.scalar_type() == (fp32 ? at::kFloat : at::kDouble);
  int64_t need = 0;
  if (!d.is_contiguous()) need += cnt * static_cast<int64_t>(d.element_size());
  if (m != kSingle || !same_type) need += cnt * elem;
  return need + 192 * n;  // roff, act, size, chain, last, merges (4), eff, key, sort order, label
}

at::Tensor linkage_cpu(const at::Tensor& d, const std::string& method, const std::string& mode,
                       std::optional<at::ScalarType> storage) {
  const char* op = "simprune::linkage_cpu";
  const int m = parse_method(method, op);
  const bool strict = parse_mode(mode, op);
  const bool fp32 = parse_storage(storage, op);
  check_no_strict_float32(strict, fp32, op);
  const int64_t n = check_condensed(d, at::kCPU, op);
  if (n >= 2) {  // before any O(n^2) allocation
    check_host_memory(linkage_cpu_bytes_needed(d, m, n, fp32), n,
                      fp32 ? "the float32 condensed working copy, 2 n(n-1) bytes, plus O(n)"
                           : "the float64 condensed working copy, 4 n(n-1) bytes, plus O(n)",
                      op, fp32 ? "" : " (storage=torch.float32 would halve it)");
  }
  at::Tensor Z = at::empty({n - 1, 4}, d.options().dtype(at::kDouble));
  if (n < 2) return Z;
  const int64_t forced = parallel_min_n(-1);
  const int64_t min_active = forced >= 0 ? forced : kParallelMinActive;
  const int64_t min_n = forced >= 0 ? forced : m == kSingle ? kParallelMinNSingle : kParallelMinN;
  const int threads = threads_for(n, min_n);
  std::vector<double> merges, eff;
  if (fp32) {
    run_linkage<float>(d, m, n, threads, min_active, op, merges, eff);
  } else {
    run_linkage<double>(d, m, n, threads, min_active, op, merges, eff);
  }
  std::vector<double> key(n - 1);
  // single: the sorted MST is Kruskal's order, always a valid tree -- no guard needed.
  const bool guard = !strict && m != kSingle;
  for (int64_t k = 0; k < n - 1; ++k) key[k] = guard ? eff[k] : merges[4 * k + 2];
  sort_and_label(merges, key, n, Z.data_ptr<double>());
  return Z;
}

}  // namespace
}  // namespace linkage
}  // namespace simprune

TORCH_LIBRARY_IMPL(simprune, CPU, m) { m.impl("linkage_cpu", &simprune::linkage::linkage_cpu); }
