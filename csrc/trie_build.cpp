// Builds the CSR item trie in one sort and one pass per level.
//
// Sorting the identifiers lexicographically makes every trie node a run of consecutive rows, so the nodes
// of one level, taken in row order, are already grouped by parent and sorted by token: numbering them
// breadth-first gives each parent a contiguous, token-sorted block of children for free.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "checks.h"
#include "ops.h"

namespace atspeed_ext {

namespace {
at::Tensor to_tensor(const std::vector<int64_t>& v) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
  return t;
}
}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> build_trie(
    const at::Tensor& sequences) {
  ATS_CHECK_DIM(sequences, 2);
  ATS_CHECK_DTYPE(sequences, at::kLong);
  TORCH_CHECK(sequences.device().is_cpu(), "sequences must be on the CPU, got ", sequences.device());
  TORCH_CHECK(sequences.size(0) > 0 && sequences.size(1) > 0, "sequences must be non-empty, got shape ",
              sequences.sizes());
  const at::Tensor seq = sequences.contiguous();
  const int64_t n = seq.size(0), depth = seq.size(1);
  const int64_t* tok = seq.data_ptr<int64_t>();

  // Row order: lexicographic by tokens, ties (shared identifiers) by item id.
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const int64_t* ra = tok + a * depth;
    const int64_t* rb = tok + b * depth;
    for (int64_t d = 0; d < depth; ++d) {
      if (ra[d] != rb[d]) return ra[d] < rb[d];
    }
    return a < b;
  });

  std::vector<int64_t> child_offsets{0};   // grows to num_nodes + 1 (root first)
  std::vector<int64_t> child_tokens;       // edge e -> node e + 1
  std::vector<int64_t> node_parent{-1};
  std::vector<int64_t> level_offsets{0, 1};
  std::vector<int64_t> row_node(n, 0);     // node of each sorted row at the current level

  for (int64_t d = 0; d < depth; ++d) {
    const int64_t level_begin = level_offsets.back();
    int64_t next_node = level_begin;
    int64_t last_parent = -1, last_token = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t parent = row_node[i];
      const int64_t token = tok[order[i] * depth + d];
      if (parent != last_parent || token != last_token) {
        // A new node: every parent from the last one seen up to this one gets its child range opened.
        while (static_cast<int64_t>(child_offsets.size()) <= parent) child_offsets.push_back(next_node - 1);
        child_tokens.push_back(token);
        node_parent.push_back(parent);
        ++next_node;
        last_parent = parent;
        last_token = token;
      }
      row_node[i] = next_node - 1;
    }
    // Close the child ranges of the remaining parents of this level.
    while (static_cast<int64_t>(child_offsets.size()) < level_begin + 1) child_offsets.push_back(next_node - 1);
    level_offsets.push_back(next_node);
  }
  // Leaves have no children.
  const int64_t num_nodes = level_offsets.back();
  while (static_cast<int64_t>(child_offsets.size()) < num_nodes + 1) child_offsets.push_back(num_nodes - 1);

  // Items per leaf: sorted rows of one leaf are consecutive.
  const int64_t first_leaf = level_offsets[depth];
  std::vector<int64_t> leaf_item_offsets(num_nodes - first_leaf + 1, 0);
  for (int64_t i = 0; i < n; ++i) leaf_item_offsets[row_node[i] - first_leaf + 1] += 1;
  std::partial_sum(leaf_item_offsets.begin(), leaf_item_offsets.end(), leaf_item_offsets.begin());

  return {to_tensor(child_offsets), to_tensor(child_tokens), to_tensor(node_parent), to_tensor(level_offsets),
          to_tensor(leaf_item_offsets), to_tensor(order)};
}

}  // namespace atspeed_ext
