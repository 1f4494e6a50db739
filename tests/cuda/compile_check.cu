// Instantiates every device kernel so that nvcc compiles all of them without
// torch (the CPU build of PyTorch has no CUDA headers to link against). Built by
// tests/test_cuda_compile.py for sm_80 and sm_90a; not part of the extension.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../../csrc/cuda/select.cuh"
#include "../../csrc/cuda/token_stats.cuh"

namespace dmkernels {
namespace cuda {

template __global__ void token_stats_partial_kernel<float>(const float*, const int64_t*, const bool*, StatsParams,
                                                           StatsTuple*);
template __global__ void token_stats_partial_kernel<__half>(const __half*, const int64_t*, const bool*, StatsParams,
                                                            StatsTuple*);
template __global__ void token_stats_partial_kernel<__nv_bfloat16>(const __nv_bfloat16*, const int64_t*, const bool*,
                                                                   StatsParams, StatsTuple*);
// The vocabulary-slice variant (token_stats_partial).
template __global__ void token_stats_partial_kernel<float, true>(const float*, const int64_t*, const bool*,
                                                                 StatsParams, StatsTuple*);
template __global__ void token_stats_partial_kernel<__half, true>(const __half*, const int64_t*, const bool*,
                                                                  StatsParams, StatsTuple*);
template __global__ void token_stats_partial_kernel<__nv_bfloat16, true>(const __nv_bfloat16*, const int64_t*,
                                                                         const bool*, StatsParams, StatsTuple*);

#define DMK_SELECT_INSTANCES(S)                                                                             \
  template __global__ void select_topk_kernel<S>(Rows<S>, Rows<bool>, const int64_t*, int64_t, bool*);    \
  template __global__ void select_threshold_kernel<S>(Rows<S>, Rows<bool>, double, int64_t, bool*);       \
  template __global__ void select_factor_kernel<S>(Rows<S>, Rows<bool>, double, int64_t, bool*);          \
  template __global__ void select_entropy_bounded_kernel<S, S>(Rows<S>, Rows<S>, Rows<bool>, double, int64_t, bool*);

DMK_SELECT_INSTANCES(float)
DMK_SELECT_INSTANCES(double)
DMK_SELECT_INSTANCES(__half)
DMK_SELECT_INSTANCES(__nv_bfloat16)

template __global__ void select_group_kernel<int64_t, int64_t>(Rows<bool>, Rows<int64_t>, const int64_t*, int64_t,
                                                               int64_t, bool*);
template __global__ void select_group_kernel<int32_t, int32_t>(Rows<bool>, Rows<int32_t>, const int32_t*, int64_t,
                                                               int64_t, bool*);
template __global__ void commit_kernel<int64_t, int64_t>(int64_t*, int64_t, int64_t, Rows<int64_t>, Rows<bool>, int64_t,
                                                         int64_t, bool*, int64_t*);
template __global__ void commit_kernel<int32_t, int64_t>(int32_t*, int64_t, int64_t, Rows<int64_t>, Rows<bool>, int64_t,
                                                         int64_t, bool*, int64_t*);

}  // namespace cuda
}  // namespace dmkernels
