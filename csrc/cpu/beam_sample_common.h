// Argument checks of trie_beam_sample, shared by the CPU and CUDA glue (the beam step's checks plus the
// uniforms and the temperature).
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>

#include "../checks.h"
#include "beam_step_common.h"

namespace atspeed_ext {

inline void check_beam_sample_args(const at::Tensor& logits, const at::Tensor& beam_scores,
                                   const at::Tensor& beam_nodes, const at::Tensor& beam_live,
                                   const at::Tensor& child_offsets, const at::Tensor& child_tokens,
                                   const at::Tensor& uniforms, double temperature, int64_t num_out) {
  check_beam_step_args(logits, beam_scores, beam_nodes, beam_live, child_offsets, child_tokens, num_out);
  ATS_CHECK_DIM(uniforms, 3);
  ATS_CHECK_DTYPE(uniforms, at::kDouble);
  TORCH_CHECK(uniforms.size(0) == logits.size(0) && uniforms.size(1) == logits.size(1) && uniforms.size(2) >= 1,
              "uniforms must be [B, W, C] = [", logits.size(0), ", ", logits.size(1),
              ", C >= max children of a beam's node], got ", uniforms.sizes());
  ATS_CHECK_SAME_DEVICE(uniforms, logits);
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0.0, "temperature must be a finite number > 0, got ",
              temperature);
}

}  // namespace atspeed_ext
