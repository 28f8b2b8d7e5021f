// Host-only helpers of the CPU linkage sources (linkage.cpp, linkage_rounds.cpp): the fused values
// check + working copy, huge-page buffers, thread counts and the spin-then-yield thread team. The
// argument checks and the final sort + relabel shared with the CUDA ops: simprune/host_common.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SIMPRUNE_CPU_RELAX() _mm_pause()
#else
#define SIMPRUNE_CPU_RELAX() ((void)0)
#endif
#include <sched.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "simprune/host_common.h"
#include "simprune/linkage_common.h"

namespace simprune {
namespace linkage {

// Counts NaN, Inf and negative values of src[0, m), as converted to Tout (a float64 value beyond
// float32's range counts as Inf with float32 storage), while (optionally) copying it into dst.
template <typename Tin, typename Tout>
void copy_and_count(const Tin* src, Tout* dst, int64_t m, int threads, int64_t* n_nan,
                    int64_t* n_inf, int64_t* n_neg) {
  int64_t a = 0, b = 0, c = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : a, b, c)
  for (int64_t i = 0; i < m; ++i) {
    const Tout w = static_cast<Tout>(src[i]);
    const double v = static_cast<double>(w);
    if (dst != nullptr) dst[i] = w;
    // One well-predicted branch per element; the counts are only needed on failure.
    if (!(v >= 0.0) || v == std::numeric_limits<double>::infinity()) {
      a += std::isnan(v);
      b += std::isinf(v);
      c += v < 0.0;
    }
  }
  *n_nan = a;
  *n_inf = b;
  *n_neg = c;
}

// A large fp64 work buffer on transparent huge pages. The NN-chain and MST read columns of the
// condensed matrix: every such access lands on a different 4 KiB page (the stride is ~8n bytes), so
// with small pages nearly every access is also a TLB miss. Huge pages make the whole matrix fit the
// TLB. This machine's THP mode is "madvise", hence the explicit advice.
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
using BufferOf = std::unique_ptr<T[], FreeDeleter>;
using Buffer = BufferOf<double>;

template <typename T = double>
inline BufferOf<T> alloc_buffer(int64_t count) {
  constexpr size_t kHuge = size_t{1} << 21;
  const size_t bytes = std::max<size_t>(static_cast<size_t>(count) * sizeof(T), 64);
  const bool huge = bytes >= 2 * kHuge;
  const size_t align = huge ? kHuge : 64;
  const size_t rounded = (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  TORCH_CHECK(p != nullptr, "simprune linkage: out of memory allocating ", bytes, " bytes");
#ifdef MADV_HUGEPAGE
  if (huge) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: failure just means small pages
#endif
  return BufferOf<T>(static_cast<T*>(p));
}

// The working copy: one condensed buffer of the storage type T -- fp64 by default (scipy widens fp32
// input to fp64 the same way), fp32 with storage=float32 -- checked in the same pass. Distances are
// copied (not converted in place) because NN-chain updates them.
template <typename T = double>
inline BufferOf<T> working_copy(const at::Tensor& d, int threads, const char* op) {
  const at::Tensor src = d.contiguous();
  BufferOf<T> out = alloc_buffer<T>(src.numel());
  int64_t a = 0, b = 0, c = 0;
  if (src.scalar_type() == at::kDouble) {
    copy_and_count<double, T>(src.data_ptr<double>(), out.get(), src.numel(), threads, &a, &b, &c);
  } else {
    copy_and_count<float, T>(src.data_ptr<float>(), out.get(), src.numel(), threads, &a, &b, &c);
  }
  report_values(a, b, c, op, sizeof(T) == 4);
  return out;
}

// Read-only use (the MST; the rounds twin copies into its square matrix anyway): the input as T
// (no copy when it already is), checked as it will be stored: as Storage (float for a float32
// matrix built from it, where a float64 value beyond float32's range counts as Inf).
template <typename T = double, typename Storage = T>
inline at::Tensor checked_input(const at::Tensor& d, int threads, const char* op) {
  at::Tensor src = d.to(c10::CppTypeToScalarType<T>::value).contiguous();
  int64_t a = 0, b = 0, c = 0;
  copy_and_count<T, Storage>(src.data_ptr<T>(), nullptr, src.numel(), threads, &a, &b, &c);
  report_values(a, b, c, op, sizeof(Storage) == 4);
  return src;
}

// The size from which the loops run in parallel (linkage.cpp: also the active count below which its
// team retires to one thread): the kernel's default, or the environment variable
// SIMPRUNE_LINKAGE_PARALLEL_MIN_N (a tuning knob; the tests use it to cover the parallel paths at
// small n, the benchmark to measure the split). Results never depend on it.
inline int64_t parallel_min_n(int64_t dflt) {
  const char* e = std::getenv("SIMPRUNE_LINKAGE_PARALLEL_MIN_N");
  if (e == nullptr || *e == '\0') return dflt;
  char* end = nullptr;
  const long long v = std::strtoll(e, &end, 10);
  return (*end == '\0' && v >= 0) ? static_cast<int64_t>(v) : dflt;
}

// Threads for the OpenMP regions: torch's intra-op setting (torch.set_num_threads), not OMP's own,
// so that one knob controls every CPU kernel; small problems stay single-threaded because a barrier
// costs more than their row scans.
inline int threads_for(int64_t n, int64_t min_n) {
  const int t = at::get_num_threads();
  return n >= min_n ? std::max(1, t) : 1;
}

// A thread team for loops that synchronise once per row scan (thousands of barriers per call).
// OpenMP's barrier spins for a long time before sleeping, which is right on an idle machine and a
// disaster on an oversubscribed one (a barrier then costs a scheduler time slice: measured 30x slower
// than one thread on this 2-core box under load). This barrier spins ~20 us and then yields, and
// thread 0 watches its own waiting time: when waiting dominates a window of barriers, the team
// retires to thread 0 alone for the rest of the call. The results never depend on the team size.
class Team {
 public:
  explicit Team(int n) : n_(n), window_start_(std::chrono::steady_clock::now()) {}
  int size() const { return n_.load(std::memory_order_relaxed); }  // read after a barrier

  void wait(int tid) {
    using clock = std::chrono::steady_clock;
    const int n = size();
    if (n == 1) return;
    const auto t0 = tid == 0 ? clock::now() : clock::time_point{};
    const unsigned g = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.store(g + 1, std::memory_order_release);
    } else {
      const auto spin_until = clock::now() + std::chrono::microseconds(20);
      for (unsigned i = 1; gen_.load(std::memory_order_acquire) == g; ++i) {
        if ((i & 63) != 0 || clock::now() < spin_until) {
          SIMPRUNE_CPU_RELAX();
        } else {
          sched_yield();
        }
      }
    }
    if (tid == 0) {
      const auto t1 = clock::now();
      waited_ += t1 - t0;
      // A wait of a scheduler-slice scale means a teammate was descheduled (an oversubscribed
      // machine): a few of those, or more than half of a window's time spent waiting, and the
      // team retires.
      if (t1 - t0 > std::chrono::microseconds(500) && ++n_stalls_ >= 3) want_retire_ = true;
      if (++n_waits_ == kWindow) {
        if (2 * waited_ > t1 - window_start_) want_retire_ = true;
        n_waits_ = 0;
        waited_ = clock::duration::zero();
        window_start_ = t1;
      }
    }
  }

  // Thread 0, in a serial section: retire the team at the next decide() whatever the timings say
  // (the work per barrier has become too small to split).
  void retire() { want_retire_ = true; }
  // Thread 0, in a serial section: publish the decision (the next barrier makes it visible).
  void decide() { retire_ = want_retire_; }
  // Everyone, right after that barrier: true for the threads that must leave; thread 0 goes solo.
  bool leave(int tid) {
    if (!retire_) return false;
    if (tid == 0) n_.store(1, std::memory_order_relaxed);
    return tid != 0;
  }

 private:
  static constexpr int kWindow = 64;
  std::atomic<int> n_;
  std::atomic<int> count_{0};
  std::atomic<unsigned> gen_{0};
  bool retire_ = false;       // written by thread 0 in a serial section only
  bool want_retire_ = false;  // private to thread 0
  int n_waits_ = 0;
  int n_stalls_ = 0;
  std::chrono::steady_clock::duration waited_{};
  std::chrono::steady_clock::time_point window_start_;
};

// merges: discovery order, 4 doubles each (rep_a, rep_b, height, unused). key: sort key per merge.
inline void sort_and_label(const std::vector<double>& merges, const std::vector<double>& key,
                           int64_t n, double* Z) {
  sort_and_label(merges.data(), 4, key.data(), n, Z);
}

}  // namespace linkage
}  // namespace simprune
