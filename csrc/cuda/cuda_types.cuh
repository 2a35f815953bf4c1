// c10 scalar types -> the CUDA types the torch-free kernels use (layout-compatible).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace atspeed_ext {

template <typename T> struct cuda_type { using type = T; };
template <> struct cuda_type<c10::Half> { using type = __half; };
template <> struct cuda_type<c10::BFloat16> { using type = __nv_bfloat16; };

}  // namespace atspeed_ext
