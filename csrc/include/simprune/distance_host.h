// Host-side argument handling shared by the CPU and CUDA distance ops (ATen; not device code).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "simprune/distance_common.h"
#include "simprune/host_common.h"

namespace simprune {
namespace distance {

inline int metric_code(c10::string_view metric) {
  if (metric == "sqeuclidean") return kSqEuclidean;
  if (metric == "euclidean") return kEuclidean;
  if (metric == "cosine") return kCosine;
  TORCH_CHECK(false, "unknown metric '", std::string(metric),
              "'; expected sqeuclidean, euclidean or cosine");
  return -1;
}

// What every distance op checks before its plan: the precision argument, then the backend's device.
inline void check_op(const at::Tensor& x, c10::string_view precision, c10::DeviceType device,
                     const char* op) {
  TORCH_CHECK(precision == "exact" || precision == "fast", "precision must be 'exact' or 'fast'");
  TORCH_CHECK(x.device().type() == device, op, " needs ",
              device == c10::DeviceType::CPU ? "CPU" : "CUDA", " tensors");
}

struct Plan {
  at::Tensor x, y;  // compute-dtype, contiguous (cosine: rows normalised in fp64)
  at::ScalarType cdt, out_dtype;
  int metric;
  bool sym, condensed;
  int64_t n, m, d;
};

// Validates the op's arguments and prepares the compute inputs. fp16/bf16/fp32 compute in fp32 (exact
// upcast); fp64 inputs and fp64 outputs in fp64. cosine computes in fp64: rows normalised and then rounded to fp32 would
// perturb a near-duplicate pair's tiny difference by ~1 ulp of each coordinate (error ~1e-4).
inline Plan make_plan(const at::Tensor& x, const std::optional<at::Tensor>& y,
                      c10::string_view metric, bool condensed,
                      std::optional<at::ScalarType> out_dtype) {
  auto is_float = [](const at::Tensor& t) {
    auto s = t.scalar_type();
    return s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble;
  };
  TORCH_CHECK(x.dim() == 2, "x must be 2-D (n, d), got ", x.dim(), "-D");
  TORCH_CHECK(x.size(0) >= 1 && x.size(1) >= 1, "x must have at least one row and one feature");
  TORCH_CHECK(is_float(x), "x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  Plan p;
  p.metric = metric_code(metric);
  p.sym = !y.has_value();
  p.condensed = condensed;
  TORCH_CHECK(!(condensed && !p.sym), "condensed=True needs y=None");
  if (!p.sym) {
    TORCH_CHECK(y->dim() == 2 && y->size(1) == x.size(1) && y->size(0) >= 1,
                "y must be 2-D with the same number of features as x");
    TORCH_CHECK(is_float(*y), "y must be a floating-point tensor, got ", y->scalar_type());
    TORCH_CHECK(y->device() == x.device(), "x and y must be on the same device");
  }
  const bool any64 = x.scalar_type() == at::kDouble || (!p.sym && y->scalar_type() == at::kDouble);
  p.out_dtype = out_dtype.value_or(any64 ? at::kDouble : at::kFloat);
  TORCH_CHECK(p.out_dtype == at::kFloat || p.out_dtype == at::kDouble,
              "out_dtype must be float32 or float64");
  // A float64 result promises ~1e-12 (linkage heights are compared with scipy): compute in fp64.
  const bool wide = any64 || p.out_dtype == at::kDouble;
  p.cdt = (wide || p.metric == kCosine) ? at::kDouble : at::kFloat;
  auto prep = [&](const at::Tensor& t) {
    if (p.metric != kCosine) return t.to(p.cdt).contiguous();
    auto t64 = t.to(at::kDouble);
    auto nrm = at::linalg_vector_norm(t64, 2, {1}, /*keepdim=*/true);
    // All-zero rows stay zero (cosine distance 1/2 to unit rows), as the reference.
    nrm = at::where(nrm > 0, nrm, at::ones_like(nrm));
    return (t64 / nrm).contiguous();
  };
  p.x = prep(x);
  p.y = p.sym ? p.x : prep(*y);
  p.n = x.size(0);
  p.m = p.sym ? p.n : y->size(0);
  p.d = x.size(1);
  return p;
}

// Calls f(T{}, O{}) with the plan's compute type T and output type O (float or double each).
template <typename F>
void with_types(const Plan& p, F&& f) {
  if (p.cdt == at::kDouble) {
    if (p.out_dtype == at::kDouble) return f(double{}, double{});
    return f(double{}, float{});
  }
  if (p.out_dtype == at::kDouble) return f(float{}, double{});
  return f(float{}, float{});
}

inline at::Tensor make_output(const Plan& p, const at::TensorOptions& opts) {
  if (p.condensed) return at::empty({p.n * (p.n - 1) / 2}, opts.dtype(p.out_dtype));
  return at::empty({p.n, p.m}, opts.dtype(p.out_dtype));
}

}  // namespace distance
}  // namespace simprune
