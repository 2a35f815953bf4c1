// CUDA kernels of the KV-cache compaction ops, on raw pointers (spec: atspeed_ext/reference/compact_kv.py).
// What the CPU twin checks up front (keep entries, anchors, parent pointers) is checked here where it is read, by
// device-side asserts (CUDA_KERNEL_ASSERT_MSG): the op then fails with "device-side assert triggered".
#pragma once

#include <c10/macros/Macros.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace atspeed_ext::cuda {

constexpr int kCompactMaxTensors = 64;  // tensors per launch (passed by value)
constexpr int kCompactThreads = 256;
constexpr int kPlanThreads = 128;

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
  CUDA_KERNEL_ASSERT_MSG(s >= -1 && s < S, "compact_kv: a keep entry is not a slot index in [-1, S)");
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

// One block per request. Marks the prompt and the anchors' chains in new_slot (1 / 0), numbers the marked slots
// with a block-wide scan (each thread a contiguous chunk), then renumbers the kept slots' parents. Asserted where
// read (the CPU twin checks every slot up front): anchors are < S; a parent pointer is ROOT (-1), NOT_TREE (-2)
// or an earlier tree slot in [num_prompt, s); a pointer followed up an anchor's chain does not lead to NOT_TREE.
__global__ void compaction_plan_kernel(const int64_t* __restrict__ slot_parents, const int64_t* __restrict__ anchors,
                                       int64_t S, int64_t A, int64_t num_prompt, int64_t* __restrict__ keep,
                                       int64_t* __restrict__ new_parents, int64_t* __restrict__ new_slot,
                                       int64_t* __restrict__ num_kept) {
  __shared__ int64_t chunk_first[kPlanThreads + 1];
  const int64_t b = blockIdx.x;
  const int64_t* parents = slot_parents + b * S;
  int64_t* slot = new_slot + b * S;
  keep += b * S;
  new_parents += b * S;
  for (int64_t s = threadIdx.x; s < S; s += blockDim.x) slot[s] = s < num_prompt ? 1 : 0;
  __syncthreads();
  for (int64_t a = threadIdx.x; a < A; a += blockDim.x) {
    const int64_t anchor = anchors[b * A + a];
    CUDA_KERNEL_ASSERT_MSG(anchor < S, "compaction_plan: an anchors entry is not a slot (must be < S)");
    for (int64_t s = anchor; s >= 0;) {
      slot[s] = 1;
      const int64_t p = parents[s];
      CUDA_KERNEL_ASSERT_MSG(p == -1 || p == -2 || (p >= num_prompt && p < s),
                             "compaction_plan: a slot_parents entry is not ROOT (-1), NOT_TREE (-2) or an earlier "
                             "tree slot in [num_prompt, s)");
      CUDA_KERNEL_ASSERT_MSG(s == anchor || p != -2,
                             "compaction_plan: a slot_parents entry points to a NOT_TREE (-2) slot");
      s = p;
    }
  }
  __syncthreads();
  const int64_t chunk = (S + blockDim.x - 1) / blockDim.x;
  const int64_t lo = min(S, threadIdx.x * chunk), hi = min(S, lo + chunk);
  int64_t count = 0;
  for (int64_t s = lo; s < hi; ++s) count += slot[s];
  chunk_first[threadIdx.x + 1] = count;
  __syncthreads();
  if (threadIdx.x == 0) {
    chunk_first[0] = 0;
    for (unsigned t = 1; t <= blockDim.x; ++t) chunk_first[t] += chunk_first[t - 1];
  }
  __syncthreads();
  for (int64_t s = lo, n = chunk_first[threadIdx.x]; s < hi; ++s) {
    if (slot[s]) {
      keep[n] = s;
      slot[s] = n++;
    } else {
      slot[s] = -1;
    }
  }
  __syncthreads();
  const int64_t total = chunk_first[blockDim.x];
  for (int64_t i = threadIdx.x; i < S; i += blockDim.x) {
    if (i < total) {
      const int64_t p = parents[keep[i]];
      CUDA_KERNEL_ASSERT_MSG(p == -1 || p == -2 || (p >= num_prompt && p < keep[i]),
                             "compaction_plan: a slot_parents entry is not ROOT (-1), NOT_TREE (-2) or an earlier "
                             "tree slot in [num_prompt, s)");
      new_parents[i] = p >= 0 ? slot[p] : p;
    } else {
      keep[i] = -1;
      new_parents[i] = -2;
    }
  }
  if (threadIdx.x == 0) num_kept[b] = total;
}

}  // namespace atspeed_ext::cuda
