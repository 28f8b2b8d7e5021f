// SIMPRUNE_HD marks the per-element arithmetic shared by the C++ CPU kernels and the CUDA kernels
// (distance_common.h, linkage_common.h): __host__ __device__ under nvcc, nothing under a plain C++
// compiler. No includes, so device-only compiles (the strict PTX test) can use it.
#pragma once

#if defined(__CUDACC__)
#define SIMPRUNE_HD __host__ __device__
// Method dispatchers (with_reducible_method) are __host__ __device__ templates that host code calls
// with host-only lambdas: the execution-space check would warn on those instantiations.
#define SIMPRUNE_EXEC_CHECK_DISABLE _Pragma("nv_exec_check_disable")
#else
#define SIMPRUNE_HD
#define SIMPRUNE_EXEC_CHECK_DISABLE
#endif
