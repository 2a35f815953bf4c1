// CPU kernel of the KV-cache compaction op (spec: atspeed_ext/reference/compact_kv.py): one gather of slots
// per (tensor, request, head), every layer in one call.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "../ops.h"
#include "compact_kv_common.h"

namespace atspeed_ext {

std::vector<at::Tensor> compact_kv_cpu(const std::vector<at::Tensor>& caches, const at::Tensor& keep) {
  check_compact_kv_args(caches, keep);
  const at::Tensor k = keep.contiguous();
  const int64_t* kp = k.data_ptr<int64_t>();
  const int64_t B = keep.size(0), S_new = keep.size(1);
  for (int64_t i = 0; i < B * S_new; ++i) {
    TORCH_CHECK(kp[i] >= -1 && (caches.empty() || kp[i] < caches[0].size(2)), "keep[", i / S_new, ", ", i % S_new,
                "] = ", kp[i], " is not a slot index in [-1, ", caches.empty() ? 0 : caches[0].size(2), ")");
  }
  std::vector<at::Tensor> out;
  out.reserve(caches.size());
  for (const at::Tensor& cache : caches) {
    const at::Tensor src = cache.contiguous();
    const int64_t H = src.size(1), S = src.size(2), D = src.size(3);
    at::Tensor dst = at::empty({B, H, S_new, D}, src.options());
    const size_t row_bytes = static_cast<size_t>(D) * src.element_size();
    const char* sp = static_cast<const char*>(src.data_ptr());
    char* dp = static_cast<char*>(dst.data_ptr());
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / H;
        for (int64_t i = 0; i < S_new; ++i) {
          char* d = dp + (bh * S_new + i) * row_bytes;
          const int64_t s = kp[b * S_new + i];
          if (s < 0) {
            std::memset(d, 0, row_bytes);
          } else {
            std::memcpy(d, sp + (bh * S + s) * row_bytes, row_bytes);
          }
        }
      }
    });
    out.push_back(dst);
  }
  return out;
}

TORCH_LIBRARY_IMPL(atspeed_ext, CPU, m) { m.impl("compact_kv", &compact_kv_cpu); }

}  // namespace atspeed_ext
