// The outputs every beam op returns, allocated in one place for the CPU and CUDA glue: per request, n slots of
// (score float32, parent / token / trie node int64); the verification ops add the accepted level count.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <tuple>

namespace atspeed_ext {

struct BeamOutputs {
  at::Tensor scores, parents, tokens, nodes;  // [B, n] each

  // float_options: float32 on the inputs' device (the beam scores' options).
  BeamOutputs(int64_t B, int64_t n, const at::TensorOptions& float_options)
      : scores(at::empty({B, n}, float_options)),
        parents(at::empty({B, n}, float_options.dtype(at::kLong))),
        tokens(at::empty({B, n}, float_options.dtype(at::kLong))),
        nodes(at::empty({B, n}, float_options.dtype(at::kLong))) {}

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tuple() const { return {scores, parents, tokens, nodes}; }
};

// The verification ops' outputs: accepted levels [B] (int64) and the new K beams.
struct VerifyOutputs : BeamOutputs {
  at::Tensor accepted;

  VerifyOutputs(int64_t B, int64_t K, const at::TensorOptions& float_options)
      : BeamOutputs(B, K, float_options), accepted(at::empty({B}, float_options.dtype(at::kLong))) {}

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tuple() const {
    return {accepted, scores, parents, tokens, nodes};
  }
};

}  // namespace atspeed_ext
