// CPU kernels of the KV-cache compaction ops (spec: atspeed_ext/reference/compact_kv.py): the plan (which
// slots survive, renumbered) and one gather of slots per (tensor, request, head), every layer in one call.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
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
    // Slots are read in place through the strides wherever a slot's D values are contiguous: a compiled model's
    // prefill leaves its cache in [B, S, H, D] memory order, and copying it first cost 4x the gather.
    const at::Tensor src = (cache.size(3) == 1 || cache.stride(3) == 1) ? cache : cache.contiguous();
    const int64_t H = src.size(1), D = src.size(3);
    const int64_t sB = src.stride(0), sH = src.stride(1), sS = src.stride(2);
    at::Tensor dst = at::empty({B, H, S_new, D}, src.options());
    const size_t elem = src.element_size(), row_bytes = static_cast<size_t>(D) * elem;
    const char* sp = static_cast<const char*>(src.data_ptr());
    char* dp = static_cast<char*>(dst.data_ptr());
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        for (int64_t i = 0; i < S_new; ++i) {
          char* d = dp + (bh * S_new + i) * row_bytes;
          const int64_t s = kp[b * S_new + i];
          if (s < 0) {
            std::memset(d, 0, row_bytes);
          } else {
            std::memcpy(d, sp + static_cast<size_t>(b * sB + h * sH + s * sS) * elem, row_bytes);
          }
        }
      }
    });
    out.push_back(dst);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> compaction_plan_cpu(const at::Tensor& slot_parents,
                                                                               const at::Tensor& anchors,
                                                                               int64_t num_prompt) {
  check_compaction_plan_args(slot_parents, anchors, num_prompt);
  const int64_t B = slot_parents.size(0), S = slot_parents.size(1), A = anchors.size(1);
  const at::Tensor par = slot_parents.contiguous(), anc = anchors.contiguous();
  const int64_t* pp = par.data_ptr<int64_t>();
  const int64_t* ap = anc.data_ptr<int64_t>();
  check_parent_pointers(pp, B, S, num_prompt);
  for (int64_t i = 0; i < B * A; ++i) {
    TORCH_CHECK(ap[i] < S, "anchors[", i / A, ", ", i % A, "] = ", ap[i], " is not a slot (S = ", S, ")");
  }
  at::Tensor keep = at::full({B, S}, -1, slot_parents.options());
  at::Tensor new_parents = at::full({B, S}, kNotTree, slot_parents.options());
  at::Tensor new_slot = at::full({B, S}, -1, slot_parents.options());
  at::Tensor num_kept = at::empty({B}, slot_parents.options());
  int64_t *kp = keep.data_ptr<int64_t>(), *np = new_parents.data_ptr<int64_t>(), *sp = new_slot.data_ptr<int64_t>();
  int64_t* cp = num_kept.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t* parents = pp + b * S;
      int64_t* slot = sp + b * S;  // 1 = kept while marking, then the new index
      for (int64_t s = 0; s < std::min(num_prompt, S); ++s) slot[s] = 1;
      for (int64_t a = 0; a < A; ++a) {
        // A chain ends at an already kept slot: everything above it is kept too.
        for (int64_t s = ap[b * A + a]; s >= 0 && slot[s] != 1; s = parents[s]) slot[s] = 1;
      }
      int64_t n = 0;
      for (int64_t s = 0; s < S; ++s) {
        if (slot[s] == 1) {
          kp[b * S + n] = s;
          slot[s] = n++;
        } else {
          slot[s] = -1;
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        const int64_t p = parents[kp[b * S + i]];
        np[b * S + i] = p >= 0 ? slot[p] : p;
      }
      cp[b] = n;
    }
  });
  return {keep, new_parents, new_slot, num_kept};
}

TORCH_LIBRARY_IMPL(atspeed_ext, CPU, m) {
  m.impl("compact_kv", &compact_kv_cpu);
  m.impl("compaction_plan", &compaction_plan_cpu);
}

}  // namespace atspeed_ext
