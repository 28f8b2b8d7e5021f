// Round-synchronous reciprocal-nearest-neighbour linkage on the CPU: simprune::linkage_rounds_cpu.
//
// The CPU twin of the GPU algorithm of linkage.md section 7.3 ("simpler first version"), sharing its
// per-element arithmetic (simprune/linkage_common.h), so that CI checks the GPU algorithm's logic
// against scipy without a GPU. Every round:
//   1. row argmin of every active slot over the active columns (smallest slot wins ties);
//   2. reciprocal pairs (i < j, nn[i] = j, nn[j] = i), in slot order; the union takes slot i;
//   3. Lance-Williams phase 1: S[i][k] = S[k][i] = LW(S[i][k], S[j][k], S[i][j]) for every active
//      column k outside this round's pairs;
//   4. phase 2: for each two pairs p < q, the entry between the two new clusters in one canonical
//      order (p first, then q), from the old entries only;
//   5. dead slots are poisoned with +inf (so the argmin needs no mask) and the matrix is compacted
//      (stably, so slot order and tie-breaking are preserved) whenever the active count halves.
// Output: merges sorted by (effective height, round, sequence) -- the monotone guard in the sort key
// only -- and relabelled as scipy's label(). Exact for the reducible methods; under ties it may pick a
// different, equally valid, tie than scipy (it is never "strict").
//
// Memory: a square fp64 matrix (8 n^2 bytes), as on the GPU; or, with storage=float32, a float32
// matrix (4 n^2 bytes): Lance-Williams is still evaluated in fp64 (from the stored values) and every
// stored value is rounded to fp32 -- the GPU paths' fp32 storage, bit for bit.
#include <ATen/ATen.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "linkage_util.h"
#include "simprune/host_common.h"
#include "simprune/linkage_common.h"

namespace simprune {
namespace linkage {
namespace {

constexpr int64_t kColBlock = 512;
// A loop runs in parallel when its work is at least kParallelMinN^2 elements: below that its fork/join
// costs more than it saves (and on an oversubscribed machine a join costs a scheduler time slice).
constexpr int64_t kParallelMinN = 2048;

// First index of the minimum of row[0, m) (row has +inf at dead slots and the diagonal); -1 if none
// is finite. Two passes keep the first one vectorisable.
template <typename T>
inline int64_t row_argmin(const T* row, int64_t m) {
  constexpr T kInf = std::numeric_limits<T>::infinity();
  T mv = kInf;
  for (int64_t c = 0; c < m; ++c) mv = row[c] < mv ? row[c] : mv;
  if (!(mv < kInf)) return -1;
  for (int64_t c = 0; c < m; ++c)
    if (row[c] == mv) return c;
  return -1;
}

// T: the storage type (double, or float for storage=float32).
template <int M, typename T>
std::tuple<at::Tensor, at::Tensor> rounds(const at::Tensor& d, int64_t n) {
  constexpr T kInf = std::numeric_limits<T>::infinity();
  at::Tensor Z = at::empty({n - 1, 4}, d.options().dtype(at::kDouble));
  at::Tensor stats = at::zeros({3}, d.options().dtype(at::kLong));
  if (n < 2) return {Z, stats};
  const int64_t pmin = parallel_min_n(kParallelMinN);
  const int64_t kParallelMinWork = pmin * pmin;
  const int threads = threads_for(n, pmin);
  // Counted as stored: with float32 storage a float64 value beyond float32's range is an Inf.
  const at::Tensor dc = checked_input<double, T>(d, threads, "simprune::linkage_rounds_cpu");
  const double* src = dc.data_ptr<double>();

  // ---- step 0: the square matrix, bit-symmetric, +inf on the diagonal
  int64_t m = n;  // current (compacted) width
  BufferOf<T> S = alloc_buffer<T>(n * n);  // huge pages: the column writes stride by 8n bytes
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t off = row_offset(n, i);
    T* row = S.get() + i * n;
    row[i] = kInf;
    for (int64_t j = i + 1; j < n; ++j) {
      const T v = static_cast<T>(src[off + j]);
      row[j] = v;
      S[j * n + i] = v;
    }
  }

  // Per slot: representative leaf, size, last merge (for the guard), alive flag.
  std::vector<int64_t> rep(n), size(n, 1), last(n, -1), nn(n);
  std::vector<char> alive(n, 1), paired(n, 0);
  for (int64_t i = 0; i < n; ++i) rep[i] = i;
  std::vector<double> merges(4 * (n - 1)), eff(n - 1);
  std::vector<int64_t> pi, pj;  // this round's pairs (slots)
  std::vector<double> ph;       // and their heights
  int64_t active = n, k = 0, n_rounds = 0, n_compactions = 0, max_pairs = 0;

  while (active > 1) {
    ++n_rounds;
    // ---- 1. row argmin of every active slot
#pragma omp parallel for num_threads(threads) schedule(static) if (m * m >= kParallelMinWork)
    for (int64_t r = 0; r < m; ++r) nn[r] = alive[r] ? row_argmin(S.get() + r * m, m) : -1;

    // ---- 2. reciprocal pairs in slot order, logged as merges
    pi.clear();
    pj.clear();
    ph.clear();
    for (int64_t i = 0; i < m; ++i) {
      const int64_t j = nn[i];
      if (j > i && nn[j] == i) {
        pi.push_back(i);
        pj.push_back(j);
        ph.push_back(static_cast<double>(S[i * m + j]));
        paired[i] = paired[j] = 1;
      }
    }
    const int64_t np = static_cast<int64_t>(pi.size());
    TORCH_CHECK(np > 0, "simprune::linkage_rounds_cpu: no reciprocal pair in round ", n_rounds,
                " with ", active, " active clusters (non-finite distances after an update?)");
    max_pairs = std::max(max_pairs, np);
    for (int64_t p = 0; p < np; ++p, ++k) {
      const int64_t i = pi[p], j = pj[p];
      merges[4 * k + 0] = static_cast<double>(rep[i]);
      merges[4 * k + 1] = static_cast<double>(rep[j]);
      merges[4 * k + 2] = ph[p];
      eff[k] = effective_height(ph[p], last[i] >= 0 ? eff[last[i]] : -1.0,
                                last[j] >= 0 ? eff[last[j]] : -1.0);
      last[i] = k;
    }

    // ---- 3. phase 1: columns outside this round's pairs (rows i and column i; row j only read)
    T* Sp = S.get();
#pragma omp parallel for num_threads(threads) schedule(static) if (np * m >= kParallelMinWork)
    for (int64_t cb = 0; cb < m; cb += kColBlock) {
      const int64_t ce = std::min(m, cb + kColBlock);
      for (int64_t p = 0; p < np; ++p) {
        const int64_t i = pi[p], j = pj[p];
        const int64_t ni = size[i], nj = size[j];
        const double h = ph[p];
        T* ri = Sp + i * m;
        const T* rj = Sp + j * m;
        for (int64_t c = cb; c < ce; ++c) {
          if (!alive[c] || paired[c]) continue;
          const T v = static_cast<T>(lance_williams<M>(ri[c], rj[c], h, ni, nj, size[c]));
          ri[c] = v;
          Sp[c * m + i] = v;
        }
      }
    }
    // ---- 4. phase 2: entries between two new clusters, canonical order (p first, then q)
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4) if (np * np >= kParallelMinWork)
    for (int64_t p = 0; p < np; ++p) {
      const int64_t ip = pi[p], jp = pj[p];
      for (int64_t q = p + 1; q < np; ++q) {
        const int64_t iq = pi[q], jq = pj[q];
        // The intermediate (merge p first) stays in fp64; only the stored value is rounded.
        const T v = static_cast<T>(lance_williams_pair<M>(
            Sp[ip * m + iq], Sp[jp * m + iq], Sp[ip * m + jq], Sp[jp * m + jq], ph[p], ph[q],
            size[ip], size[jp], size[iq], size[jq]));
        Sp[ip * m + iq] = v;
        Sp[iq * m + ip] = v;
      }
    }
    // ---- 5. bookkeeping: sizes, dead slots poisoned, pair marks cleared
    for (int64_t p = 0; p < np; ++p) {
      const int64_t i = pi[p], j = pj[p];
      size[i] += size[j];
      size[j] = 0;
      alive[j] = 0;
      paired[i] = paired[j] = 0;
      std::fill(Sp + j * m, Sp + (j + 1) * m, kInf);
      for (int64_t r = 0; r < m; ++r) Sp[r * m + j] = kInf;
    }
    active -= np;

    // ---- 6. compaction when the active count has halved (stable: slot order is kept)
    if (active > 1 && 2 * active <= m) {
      ++n_compactions;
      std::vector<int64_t> keep;
      keep.reserve(active);
      for (int64_t r = 0; r < m; ++r)
        if (alive[r]) keep.push_back(r);
      const int64_t a = static_cast<int64_t>(keep.size());
      BufferOf<T> U = alloc_buffer<T>(a * a);
#pragma omp parallel for num_threads(threads) schedule(static) if (a * a >= kParallelMinWork)
      for (int64_t r = 0; r < a; ++r) {
        const T* srow = Sp + keep[r] * m;
        T* drow = U.get() + r * a;
        for (int64_t c = 0; c < a; ++c) drow[c] = srow[keep[c]];
      }
      S.swap(U);
      for (int64_t r = 0; r < a; ++r) {
        rep[r] = rep[keep[r]];
        size[r] = size[keep[r]];
        last[r] = last[keep[r]];
        alive[r] = 1;
      }
      m = a;
    }
  }

  // The sort key: effective height, then discovery order (= round, then sequence within the round).
  sort_and_label(merges, eff, n, Z.data_ptr<double>());
  stats[0] = n_rounds;
  stats[1] = n_compactions;
  stats[2] = max_pairs;
  return {Z, stats};
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> rounds_for(int meth, const at::Tensor& d, int64_t n) {
  return with_reducible_method(meth, [&](auto m) { return rounds<decltype(m)::value, T>(d, n); });
}

std::tuple<at::Tensor, at::Tensor> linkage_rounds_cpu(const at::Tensor& d, const std::string& method,
                                                      std::optional<at::ScalarType> storage) {
  const char* op = "simprune::linkage_rounds_cpu";
  const int meth = parse_method(method, op);
  const bool fp32 = parse_storage(storage, op);
  const int64_t n = check_condensed(d, at::kCPU, op);
  if (n >= 2) {  // before any O(n^2) allocation: the square matrix, and a float64 copy of the input
    const int64_t elem = fp32 ? 4 : 8;
    const bool copy = d.scalar_type() != at::kDouble || !d.is_contiguous();
    check_host_memory(elem * n * n + (copy ? 8 * d.numel() : 0) + 256 * n, n,
                      fp32 ? "the float32 square matrix, 4 n^2 bytes, plus O(n)"
                           : "the float64 square matrix, 8 n^2 bytes, plus O(n)",
                      op, fp32 ? "" : " (storage=torch.float32 would halve it)");
  }
  return fp32 ? rounds_for<float>(meth, d, n) : rounds_for<double>(meth, d, n);
}

}  // namespace
}  // namespace linkage
}  // namespace simprune

TORCH_LIBRARY_IMPL(simprune, CPU, m) {
  m.impl("linkage_rounds_cpu", &simprune::linkage::linkage_rounds_cpu);
}
