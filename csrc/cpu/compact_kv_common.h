// Argument checks of the KV-cache compaction op, shared by the CPU and CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>

#include "../checks.h"

namespace atspeed_ext {

inline void check_compact_kv_args(const std::vector<at::Tensor>& caches, const at::Tensor& keep) {
  ATS_CHECK_DIM(keep, 2);
  ATS_CHECK_DTYPE(keep, at::kLong);
  for (size_t i = 0; i < caches.size(); ++i) {
    const at::Tensor& c = caches[i];
    TORCH_CHECK(c.dim() == 4, "caches[", i, "] must be [B, H, S, D], got shape ", c.sizes());
    TORCH_CHECK(c.size(0) == keep.size(0), "caches[", i, "] has batch ", c.size(0), " but keep has ", keep.size(0));
    TORCH_CHECK(c.sizes() == caches[0].sizes() && c.scalar_type() == caches[0].scalar_type(),
                "every cache tensor must have the shape and dtype of caches[0] (", caches[0].sizes(), ", ",
                caches[0].scalar_type(), "), caches[", i, "] has ", c.sizes(), ", ", c.scalar_type());
    TORCH_CHECK(c.device() == keep.device(), "caches[", i, "] is on ", c.device(), " but keep is on ", keep.device());
  }
}

}  // namespace atspeed_ext
