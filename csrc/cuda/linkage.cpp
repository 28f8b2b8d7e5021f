// The CUDA linkage ops: simprune::linkage_cuda, simprune::linkage_rounds_cuda and
// simprune::linkage_batched_cuda. Host code only (compiled by the C++ compiler, not nvcc): argument
// parsing, the checks every op makes before any O(n^2) work -- the form of the input, the device
// memory (refused up front with the needed and free bytes), then the values -- and the dispatch to
// the algorithms (csrc/cuda/linkage_cuda.h):
//
//   mode="exact", method "single"               -> Boruvka MST          (linkage_boruvka.cu)
//   mode="exact", complete/average/weighted/ward -> reciprocal-NN rounds (linkage_rounds.cu)
//   mode="strict"                                -> scipy replayed       (linkage_strict.cu)
//   linkage_rounds_cuda (any reducible method)   -> the rounds, with their statistics
//   linkage_batched_cuda                         -> the rounds, one block per problem
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <tuple>

#include "linkage_cuda.h"
#include "simprune/host_common.h"
#include "simprune/linkage_common.h"

namespace simprune {
namespace linkage {
namespace {

constexpr const char* kOp = "simprune::linkage_cuda";

// Bytes the caching allocator can hand out on `dev` now: the device's free memory plus what the
// allocator holds but does not use.
int64_t available_device_bytes(const at::Device& dev) {
  size_t free_b = 0, total_b = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(dev.index());
  const int64_t cached =
      stats.reserved_bytes[0].current - stats.allocated_bytes[0].current;  // 0 = aggregate
  return static_cast<int64_t>(free_b) + std::max<int64_t>(cached, 0);
}

// Exact mode (rounds, Boruvka, batched). elem: bytes per matrix entry (8: float64 storage, 4:
// float32), for the message.
void check_memory(int64_t need, int64_t n, const at::Device& dev, const char* op,
                  int64_t elem = 8) {
  const int64_t avail = available_device_bytes(dev);
  TORCH_CHECK_WITH(OutOfMemoryError, need <= avail, op, ": n = ", n, " needs ", need,
                   " bytes of GPU memory (the square matrix in ", elem == 8 ? "float64" : "float32",
                   ", ", elem, " n^2 bytes, plus a compaction buffer of a quarter of it), but only ",
                   avail, " bytes are free on ", dev,
                   elem == 8 ? " (storage=torch.float32 would halve it)" : "");
}

void check_memory_strict(int64_t n, const at::Device& dev, const char* op) {
  const int64_t need = strict_bytes_needed(n);
  const int64_t avail = available_device_bytes(dev);
  TORCH_CHECK_WITH(OutOfMemoryError, need <= avail, op, ": mode='strict' with n = ", n, " needs ",
                   need,
                   " bytes of GPU memory (the square matrix in float64, 8 n^2 bytes, plus O(n)), "
                   "but only ",
                   avail, " bytes are free on ", dev,
                   " (mode='exact' with storage=torch.float32 needs about 5 n^2 bytes)");
}

// The values, on the device. fp32: float32 storage, where a float64 value beyond float32's range
// would become Inf (counted so). No O(n^2) temporary: one fused min/max reduction decides (both
// propagate NaN); only a failing input is counted, in slices of kCountChunk elements.
constexpr int64_t kCountChunk = int64_t{1} << 24;

void check_values(const at::Tensor& d, const char* op, bool fp32 = false) {
  if (d.numel() == 0) return;
  const double limit = fp32 && d.scalar_type() == at::kDouble
                           ? static_cast<double>(std::numeric_limits<float>::max())
                           : std::numeric_limits<double>::infinity();
  const auto [mn, mx] = at::aminmax(d);
  const at::Tensor ends = at::stack({mn, mx}).to(at::kDouble).cpu();  // one host round trip
  const double lo = ends.data_ptr<double>()[0], hi = ends.data_ptr<double>()[1];
  if (lo >= 0.0 && hi <= limit && !std::isinf(hi)) return;  // NaN fails every comparison
  at::Tensor counts = at::zeros({3}, d.options().dtype(at::kLong));
  for (int64_t start = 0; start < d.numel(); start += kCountChunk) {
    const at::Tensor c = d.narrow(0, start, std::min(kCountChunk, d.numel() - start));
    const at::Tensor big = std::isinf(limit) ? at::isinf(c) : at::abs(c) > limit;
    counts += at::stack({at::isnan(c).sum(), big.sum(), (c < 0).sum()});
  }
  const at::Tensor h = counts.cpu();
  const int64_t* cnt = h.data_ptr<int64_t>();
  report_values(cnt[0], cnt[1], cnt[2], op, fp32);
}

// Exact mode on one problem: the rounds, or Boruvka (single linkage in linkage_cuda).
std::tuple<at::Tensor, at::Tensor> exact_cuda(const at::Tensor& d_in, int meth, bool fp32,
                                              bool boruvka, const char* op) {
  const int64_t n = check_condensed(d_in, at::kCUDA, op);
  const c10::cuda::CUDAGuard guard(d_in.device());
  if (n < 2) {
    return {at::empty({0, 4}, d_in.options().dtype(at::kDouble)),
            at::zeros({3}, d_in.options().dtype(at::kLong))};
  }
  const int64_t elem = fp32 ? 4 : 8;
  check_memory(boruvka ? boruvka_bytes_needed(n, elem) : rounds_bytes_needed(n, elem), n,
               d_in.device(), op, elem);
  check_values(d_in, op, fp32);
  const at::Tensor d = d_in.contiguous();
  return boruvka ? boruvka_cuda(d, n, fp32, op) : rounds_cuda(d, meth, n, fp32, op);
}

at::Tensor linkage_cuda(const at::Tensor& d, const std::string& method, const std::string& mode,
                        std::optional<at::ScalarType> storage) {
  const int meth = parse_method(method, kOp);
  const bool strict = parse_mode(mode, kOp);
  const bool fp32 = parse_storage(storage, kOp);
  check_no_strict_float32(strict, fp32, kOp);
  if (!strict) return std::get<0>(exact_cuda(d, meth, fp32, meth == kSingle, kOp));
  // scipy's nn_chain / Prim replayed in one thread block: bitwise scipy.
  const int64_t n = check_condensed(d, at::kCUDA, kOp);
  const c10::cuda::CUDAGuard guard(d.device());
  if (n < 2) return at::empty({0, 4}, d.options().dtype(at::kDouble));
  check_memory_strict(n, d.device(), kOp);
  check_values(d, kOp);
  return linkage_strict_cuda(d.contiguous(), meth, n, kOp);
}

std::tuple<at::Tensor, at::Tensor> linkage_rounds_cuda(const at::Tensor& d,
                                                       const std::string& method,
                                                       std::optional<at::ScalarType> storage) {
  const int meth = parse_method(method, kOp);
  return exact_cuda(d, meth, parse_storage(storage, kOp), /*boruvka=*/false, kOp);
}

// Many independent problems (e.g. every layer of a CNN) in one launch, one block each. d is the
// concatenation of the condensed vectors; the result the concatenation of the Z matrices.
at::Tensor linkage_batched_cuda(const at::Tensor& d, at::IntArrayRef sizes,
                                const std::string& method) {
  const char* op = "simprune::linkage_batched_cuda";
  const int meth = parse_method(method, op);
  TORCH_CHECK_VALUE(d.dim() == 1, op, ": expected the 1-D concatenation of condensed vectors");
  check_distances(d, at::kCUDA, op);
  int64_t total = 0, rows = 0, need = 0, biggest = 0;
  for (const int64_t n : sizes) {
    TORCH_CHECK_VALUE(n >= 1, op, ": every problem needs n >= 1 observations, got ", n);
    total += n * (n - 1) / 2;
    rows += n - 1;
    if (n >= 2) need += rounds_bytes_needed(n, 8);
    biggest = std::max(biggest, n);
  }
  TORCH_CHECK_VALUE(total == d.numel(), op, ": the sizes need ", total,
                    " condensed distances in all, got ", d.numel());
  const c10::cuda::CUDAGuard guard(d.device());
  if (rows == 0) return at::empty({0, 4}, d.options().dtype(at::kDouble));
  check_memory(need, biggest, d.device(), op);
  check_values(d, op);
  return rounds_batched_cuda(d.contiguous(), sizes, meth, op);
}

}  // namespace
}  // namespace linkage
}  // namespace simprune

TORCH_LIBRARY_IMPL(simprune, CUDA, m) {
  m.impl("linkage_cuda", &simprune::linkage::linkage_cuda);
  m.impl("linkage_rounds_cuda", &simprune::linkage::linkage_rounds_cuda);
  m.impl("linkage_batched_cuda", &simprune::linkage::linkage_batched_cuda);
}
