// CUDA kernel of the tree attention mask / positions op, on raw pointers (spec:
// atspeed_ext/reference/tree_mask.py). The parent pointers a query's ancestor walk reads are checked there with
// the CPU twin's rule (ROOT, or an earlier tree slot in [P, s)) by device-side asserts (CUDA_KERNEL_ASSERT_MSG):
// the op then fails with "device-side assert triggered".
#pragma once

#include <c10/macros/Macros.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace atspeed_ext::cuda {

constexpr int kTreeMaskThreads = 128;

// One block per (request, query) row of the mask.
__global__ void tree_attention_mask_kernel(const int64_t* __restrict__ slot_parents,
                                           const bool* __restrict__ prompt_visible, int64_t S, int64_t P,
                                           int64_t num_queries, bool* __restrict__ mask,
                                           int64_t* __restrict__ positions) {
  const int64_t row = blockIdx.x;
  const int64_t b = row / num_queries, q = S - num_queries + row % num_queries;
  const int64_t* parents = slot_parents + b * S;
  const bool* vis = prompt_visible + b * P;
  bool* m = mask + row * S;
  const bool padding = parents[q] == -2;

  int prompt_len = 0;
  for (int64_t base = 0; base < P; base += blockDim.x) {
    const int64_t s = base + threadIdx.x;
    prompt_len += __syncthreads_count(s < P && vis[s]);
  }
  for (int64_t s = threadIdx.x; s < S; s += blockDim.x) m[s] = !padding && s < P && vis[s];
  __syncthreads();
  if (threadIdx.x == 0) {
    if (padding) {
      m[q] = true;
      positions[row] = 0;
    } else {
      int64_t depth = 0;
      for (int64_t s = q; s >= 0;) {
        m[s] = true;
        ++depth;
        const int64_t parent = parents[s];
        CUDA_KERNEL_ASSERT_MSG(parent == -1 || parent == -2 || (parent >= P && parent < s),
                               "tree_attention_mask: a slot_parents entry is not ROOT (-1), NOT_TREE (-2) or an "
                               "earlier tree slot in [P, s)");
        // q is no padding slot, so a NOT_TREE here is the parent pointer of the slot before pointing to one.
        CUDA_KERNEL_ASSERT_MSG(parent != -2,
                               "tree_attention_mask: a slot_parents entry points to a NOT_TREE (-2) slot");
        s = parent;
      }
      positions[row] = prompt_len + depth - 1;
    }
  }
}

}  // namespace atspeed_ext::cuda
