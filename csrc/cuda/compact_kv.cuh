// CUDA kernel of the KV-cache compaction op, on raw pointers (spec: atspeed_ext/reference/compact_kv.py).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace atspeed_ext::cuda {

constexpr int kCompactMaxTensors = 64;  // tensors per launch (passed by value)
constexpr int kCompactThreads = 256;

struct CompactPointers {
  const unsigned char* src[kCompactMaxTensors];
  unsigned char* dst[kCompactMaxTensors];
};

// Grid: (B * H * S_new, tensors). Each block copies one slot row of one tensor, 16 bytes (or 1) per thread step.
__global__ void compact_kv_kernel(CompactPointers ptrs, const int64_t* __restrict__ keep, int64_t H, int64_t S,
                                  int64_t S_new, int64_t row_bytes) {
  const int64_t row = blockIdx.x;  // (b, h, i)
  const int64_t i = row % S_new, bh = row / S_new, b = bh / H;
  const int64_t s = keep[b * S_new + i];
  unsigned char* d = ptrs.dst[blockIdx.y] + row * row_bytes;
  const unsigned char* src = ptrs.src[blockIdx.y] + (bh * S + (s < 0 ? 0 : s)) * row_bytes;
  const bool vec = (row_bytes % 16 == 0) && (reinterpret_cast<uintptr_t>(d) % 16 == 0) &&
                   (reinterpret_cast<uintptr_t>(src) % 16 == 0);
  if (vec) {
    const int64_t n = row_bytes / 16;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      reinterpret_cast<uint4*>(d)[j] = s < 0 ? make_uint4(0, 0, 0, 0) : reinterpret_cast<const uint4*>(src)[j];
    }
  } else {
    for (int64_t j = threadIdx.x; j < row_bytes; j += blockDim.x) d[j] = s < 0 ? 0 : src[j];
  }
}

}  // namespace atspeed_ext::cuda
