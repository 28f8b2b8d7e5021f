// Host-side helpers shared by the compiled ops, CPU (csrc/cpu) and CUDA (csrc/cuda): argument
// parsing and checks with one set of error messages, the condensed length -> n rule (the Python twin
// is simprune.ops.n_from_condensed), the values report, and the final sort + relabel of every
// linkage implementation. ATen, host code only; the per-element arithmetic that the device runs too
// lives in linkage_common.h / distance_common.h. Also the one C++20 check of the build.
#pragma once

#if __cplusplus < 202002L
#error "simprune: torch >= 2.10's ATen headers need -std=c++20 (setup.py passes it)"
#endif

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "simprune/linkage_common.h"
#include "simprune/linkage_finish.h"

#if defined(__unix__)
#include <unistd.h>
#endif

namespace simprune {

// ---- host memory --------------------------------------------------------------------------------
// Bytes a new host allocation can get now, or -1 when unknown (then nothing is refused): Linux's
// MemAvailable (free memory plus what the kernel can reclaim without swapping), capped by the
// cgroup's remaining allowance (v2 memory.max - memory.current, v1 memory.limit_in_bytes -
// memory.usage_in_bytes). The Python twin (the same sources): simprune._checks.available_host_bytes.
namespace detail {
inline int64_t read_first_int(const char* path) {
  std::ifstream f(path);
  long long v = -1;
  if (!(f >> v)) return -1;  // missing, or "max" (no limit)
  return static_cast<int64_t>(v);
}
}  // namespace detail

inline int64_t available_host_bytes() {
  int64_t avail = -1;
  {
    std::ifstream f("/proc/meminfo");
    std::string key;
    long long kb = 0;
    std::string unit;
    while (f >> key >> kb) {
      std::getline(f, unit);
      if (key == "MemAvailable:") {
        avail = static_cast<int64_t>(kb) * 1024;
        break;
      }
    }
  }
#if defined(_SC_AVPHYS_PAGES) && defined(_SC_PAGE_SIZE)
  if (avail < 0) {
    const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0) avail = static_cast<int64_t>(pages) * page;
  }
#endif
  if (avail < 0) return -1;
  const char* paths[2][2] = {
      {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},
      {"/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"}};
  for (const auto& p : paths) {
    const int64_t limit = detail::read_first_int(p[0]), usage = detail::read_first_int(p[1]);
    if (limit >= 0 && usage >= 0 && limit < (int64_t{1} << 60)) {
      avail = std::min(avail, std::max<int64_t>(limit - usage, 0));
      break;
    }
  }
  return avail;
}

// Refuses (torch.OutOfMemoryError) a job that needs more host memory than is available, before any
// of it is allocated: the message names the op, n, the bytes needed and what for, the bytes
// available, and `hint` (a cheaper option, or "").
inline void check_host_memory(int64_t need, int64_t n, const char* what, const char* op,
                              const char* hint = "") {
  const int64_t avail = available_host_bytes();
  TORCH_CHECK_WITH(OutOfMemoryError, avail < 0 || need <= avail, op, ": n = ", n, " needs ", need,
                   " bytes of host memory (", what, "), but only ", avail, " bytes are available",
                   hint);
}

// n from a condensed length m = n(n-1)/2; m = 0 means n = 1 (empty Z).
inline int64_t n_from_condensed(int64_t m, const char* op) {
  if (m == 0) return 1;
  const double nd = std::round((1.0 + std::sqrt(1.0 + 8.0 * static_cast<double>(m))) / 2.0);
  const int64_t n = static_cast<int64_t>(nd);
  TORCH_CHECK_VALUE(n * (n - 1) / 2 == m, op,
                    ": a condensed distance vector must have length n(n-1)/2 for some n; got "
                    "length ",
                    m);
  return n;
}

namespace linkage {

// ---- arguments ----------------------------------------------------------------------------------
inline int parse_method(const std::string& method, const char* op) {
  if (method == "single") return kSingle;
  if (method == "complete") return kComplete;
  if (method == "average") return kAverage;
  if (method == "weighted") return kWeighted;
  if (method == "ward") return kWard;
  TORCH_CHECK_NOT_IMPLEMENTED(method != "centroid" && method != "median", op, ": method '", method,
                              "' is not reducible, so neither the NN-chain nor reciprocal-nearest-"
                              "neighbour rounds apply; use backend='torch' (scipy)");
  TORCH_CHECK_VALUE(false, op, ": unknown linkage method '", method,
                    "'; expected single, complete, average, weighted or ward");
  return -1;
}

inline bool parse_mode(const std::string& mode, const char* op) {
  TORCH_CHECK_VALUE(mode == "exact" || mode == "strict", op, ": unknown mode '", mode,
                    "'; expected 'exact' or 'strict'");
  return mode == "strict";
}

// The working matrix's dtype (linkage's "storage" argument): float64 (None, the default) or float32
// (half the memory; Lance-Williams is still evaluated in float64 and each stored value rounded).
// Returns true for float32.
inline bool parse_storage(const std::optional<at::ScalarType>& storage, const char* op) {
  if (!storage.has_value() || *storage == at::kDouble) return false;
  TORCH_CHECK_VALUE(*storage == at::kFloat, op,
                    ": storage must be torch.float64 or torch.float32, got ", *storage);
  return true;
}

inline void check_no_strict_float32(bool strict, bool fp32, const char* op) {
  TORCH_CHECK_VALUE(!(strict && fp32), op,
                    ": mode='strict' (bitwise scipy) needs float64 storage; storage=torch.float32 "
                    "is an 'exact'-mode option");
}

// A distance tensor's dtype (float32 or float64) and device (the backend's).
inline void check_distances(const at::Tensor& d, c10::DeviceType device, const char* op) {
  TORCH_CHECK_TYPE(d.scalar_type() == at::kFloat || d.scalar_type() == at::kDouble, op,
                   ": distances must be float32 or float64, got ", d.scalar_type());
  const bool cpu = device == c10::DeviceType::CPU;
  TORCH_CHECK(d.device().type() == device, op, ": the ", cpu ? "cpu" : "cuda", " backend needs a ",
              cpu ? "CPU" : "CUDA", " tensor, got one on ", d.device());
}

// The form of a condensed distance vector d (1-D, float32/float64, on the backend's device); returns
// n. The values are checked separately (report_values), by each backend in its cheapest way.
inline int64_t check_condensed(const at::Tensor& d, c10::DeviceType device, const char* op) {
  TORCH_CHECK_VALUE(d.dim() == 1, op, ": expected a 1-D condensed distance vector, got a ", d.dim(),
                    "-D tensor of shape ", d.sizes(),
                    " (square matrices go through simprune.linkage(..., precomputed=True))");
  check_distances(d, device, op);
  return n_from_condensed(d.numel(), op);
}

// ---- values -------------------------------------------------------------------------------------
// The error for NaN, Inf and negative counts. fp32: float32 storage, where a float64 value beyond
// float32's range has been counted as Inf.
inline void report_values(int64_t n_nan, int64_t n_inf, int64_t n_neg, const char* op,
                          bool fp32 = false) {
  TORCH_CHECK_VALUE(n_nan == 0 && n_inf == 0, op, ": distances contain ", n_nan, " NaN and ", n_inf,
                    " Inf value(s); linkage needs finite distances",
                    fp32 ? " (with storage=torch.float32, values beyond float32's range, 3.4e38, "
                           "count as Inf)"
                         : "");
  TORCH_CHECK_VALUE(n_neg == 0, op, ": distances must be non-negative; found ", n_neg,
                    " negative value(s)");
}

}  // namespace linkage
}  // namespace simprune
