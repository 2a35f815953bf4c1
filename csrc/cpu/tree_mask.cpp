// CPU kernel of the tree attention mask / positions op (spec: atspeed_ext/reference/tree_mask.py).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../ops.h"
#include "tree_mask_common.h"

namespace atspeed_ext {

std::tuple<at::Tensor, at::Tensor> tree_attention_mask_cpu(const at::Tensor& slot_parents,
                                                           const at::Tensor& prompt_visible, int64_t num_queries) {
  check_tree_mask_args(slot_parents, prompt_visible, num_queries);
  const int64_t B = slot_parents.size(0), S = slot_parents.size(1), P = prompt_visible.size(1);
  const at::Tensor par = slot_parents.contiguous(), vis = prompt_visible.contiguous();
  const int64_t* pp = par.data_ptr<int64_t>();
  const bool* vp = vis.data_ptr<bool>();
  check_parent_pointers(pp, B, S, P);
  at::Tensor mask = at::empty({B, num_queries, S}, slot_parents.options().dtype(at::kBool));
  at::Tensor positions = at::empty({B, num_queries}, slot_parents.options());
  bool* mp = mask.data_ptr<bool>();
  int64_t* op = positions.data_ptr<int64_t>();
  std::vector<int64_t> prompt_len(B, 0);
  for (int64_t b = 0; b < B; ++b) prompt_len[b] = std::count(vp + b * P, vp + (b + 1) * P, true);

  at::parallel_for(0, B * num_queries, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / num_queries, q = S - num_queries + row % num_queries;
      bool* m = mp + row * S;
      const int64_t* parents = pp + b * S;
      if (parents[q] == kNotTree) {
        std::fill(m, m + S, false);
        m[q] = true;
        op[row] = 0;
        continue;
      }
      std::copy(vp + b * P, vp + (b + 1) * P, m);
      std::fill(m + P, m + S, false);
      int64_t depth = 0;
      for (int64_t s = q; s >= 0; s = parents[s]) {
        m[s] = true;
        ++depth;
      }
      op[row] = prompt_len[b] + depth - 1;
    }
  });
  return {mask, positions};
}

TORCH_LIBRARY_IMPL(atspeed_ext, CPU, m) { m.impl("tree_attention_mask", &tree_attention_mask_cpu); }

}  // namespace atspeed_ext
