// CUDA glue of the KV-cache compaction op: every layer's keys and values in as few launches as possible.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../cpu/compact_kv_common.h"
#include "compact_kv.cuh"

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
    const dim3 grid(static_cast<unsigned>(B * H * S_new), static_cast<unsigned>(n));
    cuda::compact_kv_kernel<<<grid, cuda::kCompactThreads / 4, 0, stream>>>(ptrs, k.data_ptr<int64_t>(), H, S,
                                                                             S_new, row_bytes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

TORCH_LIBRARY_IMPL(atspeed_ext, CUDA, m) { m.impl("compact_kv", &compact_kv_cuda); }

}  // namespace atspeed_ext
