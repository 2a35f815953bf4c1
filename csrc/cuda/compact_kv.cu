// CUDA glue of the KV-cache compaction ops: the plan in one launch, then every layer's keys and values in as few
// launches as possible.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../cpu/compact_kv_common.h"
#include "compact_kv.cuh"
#include "cuda_types.cuh"

namespace atspeed_ext {

std::vector<at::Tensor> compact_kv_cuda(const std::vector<at::Tensor>& caches, const at::Tensor& keep) {
  check_compact_kv_args(caches, keep);
  TORCH_CHECK(keep.is_cuda(), "keep must be a CUDA tensor, got ", keep.device());
  const c10::cuda::CUDAGuard guard(keep.device());
  const at::Tensor k = keep.contiguous();
  const int64_t B = keep.size(0), S_new = keep.size(1);
  std::vector<at::Tensor> src, out;
  for (const at::Tensor& c : caches) {
    src.push_back(c.contiguous());
    out.push_back(at::empty({B, c.size(1), S_new, c.size(3)}, c.options()));
  }
  if (caches.empty() || B * S_new == 0 || caches[0].size(1) == 0 || caches[0].size(3) == 0) return out;
  const int64_t H = caches[0].size(1), S = caches[0].size(2);
  const int64_t row_bytes = caches[0].size(3) * caches[0].element_size();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (size_t first = 0; first < src.size(); first += cuda::kCompactMaxTensors) {
    const size_t n = std::min<size_t>(cuda::kCompactMaxTensors, src.size() - first);
    cuda::CompactPointers ptrs{};
    for (size_t t = 0; t < n; ++t) {
      ptrs.src[t] = static_cast<const unsigned char*>(src[first + t].data_ptr());
      ptrs.dst[t] = static_cast<unsigned char*>(out[first + t].data_ptr());
    }
    const dim3 grid(grid_blocks(B * H * S_new, "compact_kv"), static_cast<unsigned>(n));
    cuda::compact_kv_kernel<<<grid, cuda::kCompactThreads / 4, 0, stream>>>(ptrs, k.data_ptr<int64_t>(), H, S,
                                                                             S_new, row_bytes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> compaction_plan_cuda(const at::Tensor& slot_parents,
                                                                                const at::Tensor& anchors,
                                                                                int64_t num_prompt) {
  check_compaction_plan_args(slot_parents, anchors, num_prompt);
  TORCH_CHECK(slot_parents.is_cuda(), "slot_parents must be a CUDA tensor, got ", slot_parents.device());
  const c10::cuda::CUDAGuard guard(slot_parents.device());
  const int64_t B = slot_parents.size(0), S = slot_parents.size(1);
  const at::Tensor par = slot_parents.contiguous(), anc = anchors.contiguous();
  at::Tensor keep = at::empty({B, S}, slot_parents.options());
  at::Tensor new_parents = at::empty({B, S}, slot_parents.options());
  at::Tensor new_slot = at::empty({B, S}, slot_parents.options());
  at::Tensor num_kept = at::empty({B}, slot_parents.options());
  if (B == 0) return {keep, new_parents, new_slot, num_kept};
  cuda::compaction_plan_kernel<<<B, cuda::kPlanThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      par.data_ptr<int64_t>(), anc.data_ptr<int64_t>(), S, anchors.size(1), num_prompt, keep.data_ptr<int64_t>(),
      new_parents.data_ptr<int64_t>(), new_slot.data_ptr<int64_t>(), num_kept.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {keep, new_parents, new_slot, num_kept};
}

TORCH_LIBRARY_IMPL(atspeed_ext, CUDA, m) {
  m.impl("compact_kv", &compact_kv_cuda);
  m.impl("compaction_plan", &compaction_plan_cuda);
}

}  // namespace atspeed_ext
