// c10 scalar types -> the CUDA types the torch-free kernels use (layout-compatible); grid sizes, checked.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace atspeed_ext {

template <typename T> struct cuda_type { using type = T; };
template <> struct cuda_type<c10::Half> { using type = __half; };
template <> struct cuda_type<c10::BFloat16> { using type = __nv_bfloat16; };

// A grid of `blocks` blocks along x, whose limit is 2^31 - 1: a larger count narrowed to unsigned would wrap and
// leave part of the output unwritten, without an error.
inline unsigned grid_blocks(int64_t blocks, const char* op) {
  TORCH_CHECK(blocks <= 2147483647, op, ": ", blocks, " CUDA blocks exceed the grid limit (2^31 - 1); split the "
              "batch");
  return static_cast<unsigned>(blocks);
}

}  // namespace atspeed_ext
