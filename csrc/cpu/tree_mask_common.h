// Codes and argument checks of the tree attention mask op (and of the parent pointers every tree op reads),
// shared by the CPU and CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>

#include "../checks.h"

namespace atspeed_ext {

constexpr int64_t kRoot = -1;     // a tree slot attached directly to the prompt
constexpr int64_t kNotTree = -2;  // a prompt or padding slot

inline void check_tree_mask_args(const at::Tensor& slot_parents, const at::Tensor& prompt_visible,
                                 int64_t num_queries) {
  ATS_CHECK_DIM(slot_parents, 2);
  ATS_CHECK_DTYPE(slot_parents, at::kLong);
  ATS_CHECK_DIM(prompt_visible, 2);
  ATS_CHECK_DTYPE(prompt_visible, at::kBool);
  ATS_CHECK_SAME_DEVICE(prompt_visible, slot_parents);
  TORCH_CHECK(prompt_visible.size(0) == slot_parents.size(0), "prompt_visible must be [B, P] with B = ",
              slot_parents.size(0), ", got shape ", prompt_visible.sizes());
  TORCH_CHECK(num_queries >= 0 && prompt_visible.size(1) + num_queries <= slot_parents.size(1),
              "need 0 <= num_queries and P + num_queries <= S; got num_queries = ", num_queries, ", P = ",
              prompt_visible.size(1), ", S = ", slot_parents.size(1));
}

// Parent pointers must go backwards to a tree slot (or be ROOT / NOT_TREE): checked here for every slot on the
// CPU; the CUDA kernels assert it on the device for the pointers they read.
inline void check_parent_pointers(const int64_t* parents, int64_t B, int64_t S, int64_t P) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* pp = parents + b * S;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t p = pp[s];
      TORCH_CHECK(p == kRoot || p == kNotTree || (p >= P && p < s && pp[p] != kNotTree), "slot_parents[", b, ", ", s,
                  "] = ", p, ": a parent must be ROOT (-1), NOT_TREE (-2) or an earlier tree slot in [", P, ", ", s,
                  ")");
    }
  }
}

}  // namespace atspeed_ext
