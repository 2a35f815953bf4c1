// CUDA glue of the tree attention mask / positions op.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../cpu/tree_mask_common.h"
#include "tree_mask.cuh"
#include "cuda_types.cuh"

namespace atspeed_ext {

std::tuple<at::Tensor, at::Tensor> tree_attention_mask_cuda(const at::Tensor& slot_parents,
                                                            const at::Tensor& prompt_visible, int64_t num_queries) {
  check_tree_mask_args(slot_parents, prompt_visible, num_queries);
  TORCH_CHECK(slot_parents.is_cuda(), "slot_parents must be a CUDA tensor, got ", slot_parents.device());
  const c10::cuda::CUDAGuard guard(slot_parents.device());
  const int64_t B = slot_parents.size(0), S = slot_parents.size(1), P = prompt_visible.size(1);
  const at::Tensor par = slot_parents.contiguous(), vis = prompt_visible.contiguous();
  at::Tensor mask = at::empty({B, num_queries, S}, slot_parents.options().dtype(at::kBool));
  at::Tensor positions = at::empty({B, num_queries}, slot_parents.options());
  if (B * num_queries == 0) return {mask, positions};
  cuda::tree_attention_mask_kernel<<<grid_blocks(B * num_queries, "tree_attention_mask"), cuda::kTreeMaskThreads, 0,
                                     c10::cuda::getCurrentCUDAStream()>>>(
      par.data_ptr<int64_t>(), vis.data_ptr<bool>(), S, P, num_queries, mask.data_ptr<bool>(),
      positions.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {mask, positions};
}

TORCH_LIBRARY_IMPL(atspeed_ext, CUDA, m) { m.impl("tree_attention_mask", &tree_attention_mask_cuda); }

}  // namespace atspeed_ext
