// Argument checks of the KV-cache compaction ops, shared by the CPU and CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>

#include "../checks.h"
#include "tree_mask_common.h"

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

inline void check_compaction_plan_args(const at::Tensor& slot_parents, const at::Tensor& anchors,
                                       int64_t num_prompt) {
  ATS_CHECK_DIM(slot_parents, 2);
  ATS_CHECK_DTYPE(slot_parents, at::kLong);
  ATS_CHECK_DIM(anchors, 2);
  ATS_CHECK_DTYPE(anchors, at::kLong);
  ATS_CHECK_SAME_DEVICE(anchors, slot_parents);
  TORCH_CHECK(anchors.size(0) == slot_parents.size(0), "anchors must be [B, A] with B = ", slot_parents.size(0),
              ", got shape ", anchors.sizes());
  TORCH_CHECK(num_prompt >= 0 && num_prompt <= slot_parents.size(1), "need 0 <= num_prompt <= S; got num_prompt = ",
              num_prompt, ", S = ", slot_parents.size(1));
}

}  // namespace atspeed_ext
