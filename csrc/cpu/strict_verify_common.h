// Argument checks of the strict verification op, shared by the CPU and CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>

#include "../checks.h"

namespace atspeed_ext {

inline void check_strict_verify_args(const at::Tensor& logits, const at::Tensor& beam_rows,
                                     const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
                                     const at::Tensor& beam_live, const at::Tensor& level_parent,
                                     const at::Tensor& level_token, const at::Tensor& level_row,
                                     const at::Tensor& num_levels, const at::Tensor& child_offsets,
                                     const at::Tensor& child_tokens) {
  ATS_CHECK_DIM(logits, 3);
  ATS_CHECK_FLOATING(logits);
  ATS_CHECK_DIM(beam_rows, 2);
  ATS_CHECK_DTYPE(beam_rows, at::kLong);
  ATS_CHECK_DTYPE(beam_scores, at::kFloat);
  ATS_CHECK_DTYPE(beam_nodes, at::kLong);
  ATS_CHECK_DTYPE(beam_live, at::kBool);
  ATS_CHECK_DIM(level_parent, 3);
  ATS_CHECK_DTYPE(level_parent, at::kLong);
  ATS_CHECK_DTYPE(level_token, at::kLong);
  ATS_CHECK_DTYPE(level_row, at::kLong);
  ATS_CHECK_DIM(num_levels, 1);
  ATS_CHECK_DTYPE(num_levels, at::kLong);
  ATS_CHECK_DTYPE(child_offsets, at::kLong);
  ATS_CHECK_DTYPE(child_tokens, at::kLong);
  const int64_t B = logits.size(0), K = beam_rows.size(1);
  TORCH_CHECK(logits.size(2) >= 1, "logits must be [B, R, V] with V >= 1, got shape ", logits.sizes());
  TORCH_CHECK(K >= 1 && beam_rows.size(0) == B, "beam_rows must be [B, K] with B = ", B, ", K >= 1, got ",
              beam_rows.sizes());
  for (const at::Tensor* t : {&beam_scores, &beam_nodes, &beam_live}) {
    TORCH_CHECK(t->sizes() == beam_rows.sizes(), "beam_scores, beam_nodes and beam_live must be [B, K] = ",
                beam_rows.sizes(), ", got ", t->sizes());
  }
  TORCH_CHECK(level_parent.size(0) == B, "level_parent must be [B, G, N] with B = ", B, ", got ", level_parent.sizes());
  TORCH_CHECK(level_token.sizes() == level_parent.sizes() && level_row.sizes() == level_parent.sizes(),
              "level_token and level_row must have the shape of level_parent ", level_parent.sizes(), ", got ",
              level_token.sizes(), " and ", level_row.sizes());
  TORCH_CHECK(num_levels.size(0) == B, "num_levels must be [B] with B = ", B, ", got ", num_levels.sizes());
  TORCH_CHECK(child_offsets.dim() == 1 && child_tokens.dim() == 1 && child_offsets.size(0) == child_tokens.size(0) + 2,
              "child_offsets / child_tokens must be a trie's 1-D arrays");
  for (const at::Tensor* t : {&beam_rows, &beam_scores, &beam_nodes, &beam_live, &level_parent, &level_token,
                              &level_row, &num_levels, &child_offsets, &child_tokens}) {
    TORCH_CHECK(t->device() == logits.device(), "every input must be on ", logits.device(), ", one is on ",
                t->device());
  }
}

}  // namespace atspeed_ext
