// The host-thread concurrency harness (issue 17): just enough CUDA, as host C++20, to run the CUDA
// linkage kernels (csrc/cuda/linkage_rounds.cu, linkage_boruvka.cu, linkage_strict.cu,
// linkage_device.cuh) unchanged on the CPU, every CUDA thread its own fiber, so that
//   * their results can be compared bit for bit with the CPU twin / scipy (harness_main.cpp,
//     tests/test_concurrency_harness.py), and
//   * ThreadSanitizer (-fsanitize=thread) can look for data races between the threads, and the
//     harness itself for barrier divergence (a barrier some threads of a block skip) and deadlocks.
//
// What is emulated
//   * a launch: gridDim.x blocks x blockDim.x threads (1-D). Each warp is a host std::thread; its 32
//     lanes are fibers (ucontext) that the warp's thread runs round-robin, each until its next warp
//     primitive, barrier or exit. threadIdx/blockIdx/blockDim/gridDim are the running lane's. Blocks
//     of an ordinary launch run concurrently, or one after the other where the caller asks (a legal
//     schedule: no co-residency guarantee); a cooperative launch runs all blocks at once;
//   * warp primitives (__shfl_xor_sync, __shfl_sync, __shfl_down_sync, __ballot_sync, __any/__all,
//     __syncwarp): complete when all 32 lanes have reached the SAME primitive (same count of warp
//     primitives and barriers), values exchanged through a per-warp array. Lanes at different points
//     (a primitive or barrier some lanes skip, a lane that exits early) are reported at once;
//   * __syncthreads(): all lanes of the warp arrive, then the warp's thread waits on a std::barrier
//     of the block's warps; cooperative_groups' grid.sync(): a std::barrier of ALL warps of the grid
//     (only in a cooperative launch; elsewhere it aborts). A warp that exits leaves both barriers
//     (arrive_and_drop), and the launch then checks that every warp passed the same number of each;
//   * ThreadSanitizer: every lane is its own TSan fiber, switched WITHOUT synchronisation, so lanes
//     of one warp are as unordered as lanes of different warps between two barriers; each barrier
//     and warp primitive is a release by every participant and an acquire after it (annotations on
//     per-barrier sync objects alternating by parity), a launch a release by the host before and an
//     acquire after; races are reported with the lane's name ("block B thread T");
//   * __shared__: a function-local static, i.e. ONE copy per kernel instantiation, not one per block.
//     Correct while at most one block at a time uses a given __shared__ variable: true today (the
//     rounds kernel's scans run in the leader block only, the Boruvka hook and strict kernels are one
//     block, the grouped kernel is launched with sequential blocks). Two blocks using it at once
//     would show up as a ThreadSanitizer race;
//   * atomics (atomicMin/Max/Add/CAS/Exch): std::atomic_ref, sequentially consistent;
//   * __dadd_rn & co.: plain IEEE double operations (host code has no FMA contraction: the harness is
//     built with -ffp-contract=off, as the bitwise contract of linkage_common.h requires).
//
// What is NOT emulated (say so wherever results of this harness are quoted)
//   * the GPU memory model: std::barrier and std::atomic_ref give sequentially consistent,
//     happens-before ordering. Weak ordering (a store not yet visible to another SM without a fence,
//     a missing __threadfence, volatile vs L1 caching) cannot show up here;
//   * warp divergence semantics: lanes run one after another between warp primitives and must all
//     meet at each one; partial masks are refused, and a primitive reached by only part of a warp is
//     reported as divergence rather than doing what the hardware would (independent thread
//     scheduling, reconvergence points, the order of lanes within a warp are not modelled);
//   * timing, occupancy, co-residency limits, register/shared-memory limits, launch bounds;
//   * the host code of the .cu files (SIMPRUNE_HOST_HARNESS leaves it out: it needs ATen and <<<>>>):
//     harness_main.cpp mirrors its launch sequence, so a change there must be mirrored by hand.
//
// Failure reports (stderr, exit status): 3 = deadlock (a launch did not finish within
// SIMPRUNE_HARNESS_TIMEOUT_S seconds, default 600; every warp's position is printed), 4 = warp or
// barrier divergence (lanes of a warp at different points; warps of a block, or of the grid, that
// passed different numbers of barriers), 5 = an unsupported use (partial warp masks, grid.sync()
// outside a cooperative launch, blockDim not a multiple of 32). A ThreadSanitizer build
// (-fsanitize=thread) prints its own race reports (exit status 66 with TSAN_OPTIONS=exitcode=66).
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <bit>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <ucontext.h>
#include <vector>

// ---- keywords ----------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static  // see the header comment: one copy per kernel instantiation

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;

namespace simprune_harness {

// ---- ThreadSanitizer: fibers and happens-before annotations (no-ops in a plain build) -----------
#if defined(__SANITIZE_THREAD__)
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_set_fiber_name(void* fiber, const char* name);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
inline void* tsan_current_fiber() { return __tsan_get_current_fiber(); }
inline void* tsan_create_fiber(const char* name) {
  void* f = __tsan_create_fiber(0);
  __tsan_set_fiber_name(f, name);  // "block B thread T" in race reports
  return f;
}
inline void tsan_destroy_fiber(void* f) { __tsan_destroy_fiber(f); }
// No synchronisation on a switch: lanes of a warp are unordered between two warp primitives.
inline void tsan_switch_to(void* f) { __tsan_switch_to_fiber(f, 1u /* no_sync */); }
inline void tsan_acquire(void* a) { __tsan_acquire(a); }
inline void tsan_release(void* a) { __tsan_release(a); }
constexpr size_t kLaneStack = size_t{1} << 20;
#else
inline void* tsan_current_fiber() { return nullptr; }
inline void* tsan_create_fiber(const char*) { return nullptr; }
inline void tsan_destroy_fiber(void*) {}
inline void tsan_switch_to(void*) {}
inline void tsan_acquire(void*) {}
inline void tsan_release(void*) {}
constexpr size_t kLaneStack = size_t{256} << 10;
#endif

[[noreturn]] inline void fail(int code, const char* what) {
  std::fprintf(stderr, "harness: %s\n", what);
  std::fflush(stderr);
  std::_Exit(code);
}

// Where a lane (or a warp's host thread) is: the divergence check and the deadlock report.
enum Where : int { kRunning = 0, kWarpPrim = 1, kBlockBarrier = 2, kGridBarrier = 3, kExited = 4 };
inline const char* where_name(int w) {
  static const char* names[] = {"running", "a warp primitive", "__syncthreads", "grid.sync",
                                "exited"};
  return names[w];
}

struct Warp;
struct Block;
struct Launch;

// One CUDA thread: a fiber (ucontext) on its warp's host thread.
struct Lane {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
  Warp* warp = nullptr;
  ucontext_t ctx{};
  void* fiber = nullptr;
  char* stack = nullptr;
  // Written by the lane, read by the warp's scheduler (another ThreadSanitizer "thread"): atomics.
  std::atomic<int> where{kRunning};
  std::atomic<int64_t> warp_syncs{0}, block_syncs{0}, grid_syncs{0};
};

// One warp: a host thread that runs its 32 lanes round-robin; each lane runs until its next warp
// primitive, barrier or exit. When all 32 are at the same point, the warp primitive is complete
// (the values are in `slot`), or the host thread joins the block / grid barrier for them.
struct Warp {
  Block* block = nullptr;
  Launch* launch = nullptr;
  const std::function<void()>* body = nullptr;
  Lane lanes[32];
  ucontext_t sched_ctx{};
  void* sched_fiber = nullptr;
  uint64_t slot[2][32] = {};  // values of a warp primitive, double-buffered
  char sync[2] = {};          // ThreadSanitizer sync objects of warp primitives (by parity)
  std::atomic<int> where{kRunning};
};

struct Block {
  explicit Block(int warps) : bar(warps) {}
  std::barrier<> bar;  // the block's warps (host threads)
  char sync[2] = {};   // ThreadSanitizer sync objects of __syncthreads (by parity)
};

struct Launch {
  bool cooperative = false;
  std::unique_ptr<std::barrier<>> grid_bar;  // every warp (host thread) of the grid
  char sync[2] = {};                         // ThreadSanitizer sync objects of grid.sync
  char start = 0, end = 0;                   // launch boundaries (host <-> kernel)
};

// The lane running on this host thread (set by the scheduler before it switches to the lane).
inline thread_local std::atomic<Lane*> current_lane{nullptr};
inline Lane& lane() { return *current_lane.load(std::memory_order_relaxed); }

inline double timeout_s() {
  const char* e = std::getenv("SIMPRUNE_HARNESS_TIMEOUT_S");
  return e ? std::atof(e) : 600.0;
}

// ---- lanes and barriers ------------------------------------------------------------------------
// In the lane: publish everything done so far on `sync_obj`, give the host thread back to the
// scheduler, and on resumption (the point is complete for every participant) acquire it.
inline void lane_wait(Where w, void* sync_obj) {
  Lane& l = lane();
  tsan_release(sync_obj);
  l.where.store(w, std::memory_order_relaxed);
  tsan_switch_to(l.warp->sched_fiber);
  swapcontext(&l.ctx, &l.warp->sched_ctx);
  l.where.store(kRunning, std::memory_order_relaxed);
  tsan_acquire(sync_obj);
}

inline void block_sync() {
  Lane& l = lane();
  const int64_t k = l.block_syncs.load(std::memory_order_relaxed);
  lane_wait(kBlockBarrier, &l.warp->block->sync[k & 1]);
  l.block_syncs.store(k + 1, std::memory_order_relaxed);
}

inline void grid_sync() {
  Lane& l = lane();
  if (!l.warp->launch->cooperative) fail(5, "grid.sync() in a launch that is not cooperative");
  const int64_t k = l.grid_syncs.load(std::memory_order_relaxed);
  lane_wait(kGridBarrier, &l.warp->launch->sync[k & 1]);
  l.grid_syncs.store(k + 1, std::memory_order_relaxed);
}

inline void check_full_mask(unsigned mask) {
  if (mask != 0xffffffffu) fail(5, "a warp primitive with a partial mask (not emulated)");
}

// Every lane publishes `bits`; when the warp has met, every lane may read all 32 values from the
// returned row (valid until the lane's next-but-one warp primitive: the rows alternate).
inline const uint64_t* warp_exchange(uint64_t bits) {
  Lane& l = lane();
  Warp& w = *l.warp;
  const int64_t k = l.warp_syncs.load(std::memory_order_relaxed);
  const int p = static_cast<int>(k & 1);
  w.slot[p][l.thread_idx.x & 31] = bits;
  lane_wait(kWarpPrim, &w.sync[p]);
  l.warp_syncs.store(k + 1, std::memory_order_relaxed);
  return w.slot[p];
}

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of a type > 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

inline void lane_entry() {
  Lane& l = lane();
  tsan_acquire(&l);                        // its indices, set by the scheduler
  tsan_acquire(&l.warp->launch->start);    // the host's writes before the launch
  (*l.warp->body)();
  Warp* w = l.warp;  // read before the release below: the host frees it after the launch
  void* sched = w->sched_fiber;
  l.where.store(kExited, std::memory_order_relaxed);
  tsan_release(&w->launch->end);  // the kernel's writes, for the host after the launch
  tsan_switch_to(sched);
  swapcontext(&l.ctx, &w->sched_ctx);  // never resumed
  fail(1, "an exited lane was resumed");
}

// The host thread of one warp: runs the lanes round-robin, checks that all 32 reached the same
// point (else: divergence), joins the block or grid barrier for them.
inline void warp_main(Warp& w) {
  w.sched_fiber = tsan_current_fiber();
  for (Lane& l : w.lanes) {
    l.stack = static_cast<char*>(std::malloc(kLaneStack));
    if (!l.stack) fail(1, "out of memory (lane stacks)");
    getcontext(&l.ctx);
    l.ctx.uc_stack.ss_sp = l.stack;
    l.ctx.uc_stack.ss_size = kLaneStack;
    l.ctx.uc_link = nullptr;
    makecontext(&l.ctx, lane_entry, 0);
    char name[64];
    std::snprintf(name, sizeof name, "block %u thread %u", l.block_idx.x, l.thread_idx.x);
    l.fiber = tsan_create_fiber(name);
    tsan_release(&l);
  }
  for (;;) {
    for (Lane& l : w.lanes) {
      current_lane.store(&l, std::memory_order_relaxed);
      tsan_switch_to(l.fiber);
      swapcontext(&w.sched_ctx, &l.ctx);
    }
    current_lane.store(nullptr, std::memory_order_relaxed);
    const Lane& l0 = w.lanes[0];
    const int at = l0.where.load(std::memory_order_relaxed);
    for (const Lane& l : w.lanes) {
      if (l.where.load(std::memory_order_relaxed) != at ||
          l.warp_syncs.load(std::memory_order_relaxed) != l0.warp_syncs.load(std::memory_order_relaxed) ||
          l.block_syncs.load(std::memory_order_relaxed) != l0.block_syncs.load(std::memory_order_relaxed) ||
          l.grid_syncs.load(std::memory_order_relaxed) != l0.grid_syncs.load(std::memory_order_relaxed)) {
        std::fprintf(stderr,
                     "harness: WARP DIVERGENCE in block %u warp %u: lane %u is at %s (warp/block/grid "
                     "syncs %lld/%lld/%lld), lane 0 at %s (%lld/%lld/%lld)\n",
                     l.block_idx.x, l.thread_idx.x / 32, l.thread_idx.x & 31,
                     where_name(l.where.load()), static_cast<long long>(l.warp_syncs.load()),
                     static_cast<long long>(l.block_syncs.load()),
                     static_cast<long long>(l.grid_syncs.load()), where_name(at),
                     static_cast<long long>(l0.warp_syncs.load()),
                     static_cast<long long>(l0.block_syncs.load()),
                     static_cast<long long>(l0.grid_syncs.load()));
        fail(4, "warp divergence at a warp primitive, barrier or exit");
      }
    }
    if (at == kExited) break;
    w.where.store(at, std::memory_order_relaxed);
    if (at == kBlockBarrier) w.block->bar.arrive_and_wait();
    if (at == kGridBarrier) w.launch->grid_bar->arrive_and_wait();
    w.where.store(kRunning, std::memory_order_relaxed);
  }
  w.where.store(kExited, std::memory_order_relaxed);
  // An exited warp leaves the barriers (as exited threads do on the GPU), so that warps still
  // waiting complete and the count check after the launch reports the divergence, not a hang.
  w.block->bar.arrive_and_drop();
  if (w.launch->grid_bar) w.launch->grid_bar->arrive_and_drop();
  for (Lane& l : w.lanes) {
    tsan_destroy_fiber(l.fiber);
    std::free(l.stack);
  }
}

// ---- launches ----------------------------------------------------------------------------------
// Runs body() as grid x block CUDA threads (1-D): one host thread per warp, one fiber per lane.
// cooperative: all blocks at once, grid.sync() allowed. sequential_blocks (ordinary launches
// only): one block after the other.
inline void launch_fn(unsigned grid, unsigned block, bool cooperative, bool sequential_blocks,
                      const std::function<void()>& body) {
  if (block == 0 || block % 32 != 0) fail(5, "blockDim.x must be a positive multiple of 32");
  if (grid == 0) return;
  const unsigned wpb = block / 32;
  if (cooperative) sequential_blocks = false;
  const unsigned waves = sequential_blocks ? grid : 1;
  const unsigned per_wave = sequential_blocks ? 1 : grid;
  for (unsigned wave = 0; wave < waves; ++wave) {
    const unsigned b0 = wave * per_wave;
    Launch L;
    L.cooperative = cooperative;
    if (cooperative) {
      L.grid_bar = std::make_unique<std::barrier<>>(static_cast<std::ptrdiff_t>(grid) * wpb);
    }
    std::vector<std::unique_ptr<Block>> blocks;
    for (unsigned b = 0; b < per_wave; ++b) blocks.push_back(std::make_unique<Block>(wpb));
    const size_t nwarps = static_cast<size_t>(per_wave) * wpb;
    std::vector<std::unique_ptr<Warp>> warps;
    for (size_t i = 0; i < nwarps; ++i) {
      auto w = std::make_unique<Warp>();
      w->block = blocks[i / wpb].get();
      w->launch = &L;
      w->body = &body;
      for (unsigned t = 0; t < 32; ++t) {
        Lane& l = w->lanes[t];
        l.thread_idx = dim3(static_cast<unsigned>(i % wpb) * 32 + t, 0, 0);
        l.block_idx = dim3(b0 + static_cast<unsigned>(i / wpb), 0, 0);
        l.block_dim = dim3(block, 1, 1);
        l.grid_dim = dim3(grid, 1, 1);
        l.warp = w.get();
      }
      warps.push_back(std::move(w));
    }
    std::mutex mu;
    std::condition_variable cv;
    size_t done = 0;
    tsan_release(&L.start);
    std::vector<std::thread> threads;
    threads.reserve(nwarps);
    for (size_t i = 0; i < nwarps; ++i) {
      Warp* w = warps[i].get();
      threads.emplace_back([&, w] {
        warp_main(*w);
        const std::lock_guard<std::mutex> g(mu);
        ++done;
        cv.notify_one();
      });
    }
    {
      std::unique_lock<std::mutex> g(mu);
      const bool ok = cv.wait_for(g, std::chrono::duration<double>(timeout_s()),
                                  [&] { return done == nwarps; });
      if (!ok) {
        std::fprintf(stderr,
                     "harness: DEADLOCK: a launch (%u blocks x %u threads%s) did not finish within "
                     "%.0f s (SIMPRUNE_HARNESS_TIMEOUT_S); warps:\n",
                     grid, block, cooperative ? ", cooperative" : "", timeout_s());
        for (size_t i = 0; i < nwarps; ++i) {
          const Lane& l0 = warps[i]->lanes[0];
          std::fprintf(stderr, "  block %u warp %zu: %s (lane 0: block syncs %lld, grid syncs %lld)\n",
                       l0.block_idx.x, i % wpb, where_name(warps[i]->where.load()),
                       static_cast<long long>(l0.block_syncs.load()),
                       static_cast<long long>(l0.grid_syncs.load()));
        }
        fail(3, "deadlock");
      }
    }
    for (auto& th : threads) th.join();
    tsan_acquire(&L.end);
    // Barrier divergence between warps: every thread of a block passed the same number of block
    // barriers, every thread of the grid the same number of grid barriers.
    for (size_t i = 0; i < nwarps; ++i) {
      const Lane& l = warps[i]->lanes[0];
      const Lane& first_of_block = warps[i - i % wpb]->lanes[0];
      const Lane& first = warps[0]->lanes[0];
      if (l.block_syncs.load() != first_of_block.block_syncs.load() ||
          l.grid_syncs.load() != first.grid_syncs.load()) {
        std::fprintf(stderr,
                     "harness: BARRIER DIVERGENCE: block %u warp %zu passed %lld block / %lld grid "
                     "barriers; its block's warp 0 %lld block, the grid's first warp %lld grid\n",
                     l.block_idx.x, i % wpb, static_cast<long long>(l.block_syncs.load()),
                     static_cast<long long>(l.grid_syncs.load()),
                     static_cast<long long>(first_of_block.block_syncs.load()),
                     static_cast<long long>(first.grid_syncs.load()));
        fail(4, "barrier divergence");
      }
    }
  }
}

template <typename F>
void launch(unsigned grid, unsigned block, bool cooperative, bool sequential_blocks, F&& body) {
  const std::function<void()> fn(std::forward<F>(body));
  launch_fn(grid, block, cooperative, sequential_blocks, fn);
}

}  // namespace simprune_harness

// The built-in variables of the running lane.
#define threadIdx (::simprune_harness::lane().thread_idx)
#define blockIdx (::simprune_harness::lane().block_idx)
#define blockDim (::simprune_harness::lane().block_dim)
#define gridDim (::simprune_harness::lane().grid_dim)

// ---- device functions --------------------------------------------------------------------------
inline void __syncthreads() { simprune_harness::block_sync(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  simprune_harness::check_full_mask(mask);
  simprune_harness::warp_exchange(0);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  simprune_harness::check_full_mask(mask);
  if (width != 32) simprune_harness::fail(5, "__shfl_xor_sync with width != 32 (not emulated)");
  const uint64_t* row = simprune_harness::warp_exchange(simprune_harness::to_bits(v));
  return simprune_harness::from_bits<T>(row[(threadIdx.x & 31) ^ (lane_mask & 31)]);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  simprune_harness::check_full_mask(mask);
  if (width != 32) simprune_harness::fail(5, "__shfl_sync with width != 32 (not emulated)");
  const uint64_t* row = simprune_harness::warp_exchange(simprune_harness::to_bits(v));
  return simprune_harness::from_bits<T>(row[src_lane & 31]);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  simprune_harness::check_full_mask(mask);
  if (width != 32) simprune_harness::fail(5, "__shfl_down_sync with width != 32 (not emulated)");
  const uint64_t* row = simprune_harness::warp_exchange(simprune_harness::to_bits(v));
  const unsigned lane = threadIdx.x & 31;
  return simprune_harness::from_bits<T>(row[lane + delta < 32 ? lane + delta : lane]);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  simprune_harness::check_full_mask(mask);
  const uint64_t* row = simprune_harness::warp_exchange(pred != 0);
  unsigned b = 0;
  for (int l = 0; l < 32; ++l) b |= static_cast<unsigned>(row[l] != 0) << l;
  return b;
}
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == 0xffffffffu; }
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0u; }

inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(unsigned x) { return x ? std::countl_zero(x) : 32; }
inline int __clzll(unsigned long long x) { return x ? std::countl_zero(x) : 64; }
inline int __ffs(unsigned x) { return x ? std::countr_zero(x) + 1 : 0; }
inline int __ffsll(unsigned long long x) { return x ? std::countr_zero(x) + 1 : 0; }

inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// Atomics: std::atomic_ref, sequentially consistent (stronger than the GPU's relaxed atomics).
template <typename T>
inline T atomicMin(T* a, T v) {
  std::atomic_ref<T> r(*a);
  T old = r.load();
  while (v < old && !r.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <typename T>
inline T atomicMax(T* a, T v) {
  std::atomic_ref<T> r(*a);
  T old = r.load();
  while (old < v && !r.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <typename T>
inline T atomicAdd(T* a, T v) {
  return std::atomic_ref<T>(*a).fetch_add(v);
}
template <typename T>
inline T atomicExch(T* a, T v) {
  return std::atomic_ref<T>(*a).exchange(v);
}
template <typename T>
inline T atomicCAS(T* a, T expected, T desired) {
  std::atomic_ref<T>(*a).compare_exchange_strong(expected, desired);
  return expected;  // the old value either way
}

// ---- cooperative groups ------------------------------------------------------------------------
namespace cooperative_groups {
struct grid_group {
  void sync() const { simprune_harness::grid_sync(); }
  bool is_valid() const { return simprune_harness::lane().warp->launch->cooperative; }
};
struct thread_block {
  void sync() const { simprune_harness::block_sync(); }
};
inline grid_group this_grid() { return {}; }
inline thread_block this_thread_block() { return {}; }
}  // namespace cooperative_groups
