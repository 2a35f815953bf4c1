"""A Hugging Face model's KV cache used as a tree: every cache slot carries a parent pointer.

Each request's cache row holds its prompt (left-padded, ``P`` slots) and then tree slots appended by
:meth:`TreeKV.feed`; a fed token attends to the real prompt tokens and to its chain of ancestors (the
``tree_attention_mask`` op), at position ``prompt_length + depth - 1``. Prompts are stored once, whatever
the number of beams.
"""

from __future__ import annotations

import torch

from . import _ops
from ._hf_compat import ForwardSignature, cache_tensors, set_cache_tensors
from .reference.tree_mask import NOT_TREE, ROOT

__all__ = ["TreeKV", "ROOT", "NOT_TREE", "additive_mask", "prompt_attention"]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool ``[B, Q, S]`` may-attend mask as the additive ``[B, 1, Q, S]`` mask Hugging Face models take
    (0 where allowed, the dtype's minimum elsewhere; every attention implementation accepts it)."""
    return torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=allowed.device).masked_fill_(
        allowed, 0).unsqueeze(1)   # (no negated copy of the bool mask: it is [B, Q, S] too)


def prompt_attention(prompt_visible: torch.Tensor) -> torch.Tensor:
    """The prefill's may-attend mask ``[B, P, P]`` for left-padded prompts (``prompt_visible [B, P]`` bool):
    causal over the real prompt tokens; a padding row sees itself only. (A padding row that sees nothing would
    be a softmax over nothing: NaN in eager attention with float64, which then spreads through its row.)"""
    B, P = prompt_visible.shape
    causal = torch.ones(P, P, dtype=torch.bool, device=prompt_visible.device).tril()
    rows = causal.unsqueeze(0) & prompt_visible.unsqueeze(1)
    return rows.logical_or_(torch.eye(P, dtype=torch.bool, device=prompt_visible.device))


def compact_all(tensors: list[torch.Tensor], keep: torch.Tensor) -> list[torch.Tensor]:
    """:func:`_ops.compact_kv` over cache tensors of any mix of shapes and dtypes: one op per group of equal
    shape and dtype, in the common case all of them in one op (keys and values can differ, e.g. a float32 model
    under bfloat16 autocast, or MLA models whose keys are wider than their values)."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((tuple(t.shape), t.dtype), []).append(i)
    if len(groups) == 1:
        return _ops.compact_kv(tensors, keep)
    out: list[torch.Tensor | None] = [None] * len(tensors)
    for indices in groups.values():
        for i, t in zip(indices, _ops.compact_kv([tensors[i] for i in indices], keep)):
            out[i] = t
    return out


class TreeKV:
    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._sig = ForwardSignature(model)
        self.cache = None
        self.slot_parents: torch.Tensor | None = None   # [B, S]
        self.prompt_visible: torch.Tensor | None = None  # [B, P]

    @property
    def num_slots(self) -> int:
        return self.slot_parents.shape[1]

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, tree_tokens: torch.Tensor | None = None,
                tree_parents: torch.Tensor | None = None) -> torch.Tensor:
        """Feed the prompts (and optionally a first layer of tree slots in the same call).

        Returns the logits of the last prompt position followed by those of the tree slots:
        ``[B, 1 + M, V]``.
        """
        B, P = ids.shape
        self.prompt_visible = mask.bool()
        self.slot_parents = torch.full((B, P), NOT_TREE, dtype=torch.long, device=ids.device)
        prompt_pos = (mask.cumsum(1) - 1).clamp(min=0)
        M = 0 if tree_tokens is None else tree_tokens.shape[1]
        kwargs = {}
        if self._sig.has_logits_to_keep:
            kwargs["logits_to_keep"] = M + 1
        if M == 0:
            attn = None if bool(mask.all()) else additive_mask(prompt_attention(self.prompt_visible), self.model.dtype)
            out = self.model(input_ids=ids, attention_mask=attn, position_ids=prompt_pos, use_cache=True, **kwargs)
        else:
            self.slot_parents = torch.cat([self.slot_parents, tree_parents], 1)
            tree_mask, tree_pos = _ops.tree_attention_mask(self.slot_parents, self.prompt_visible, M)
            # Prompt rows: the prompt's own mask, blind to the tree.
            prompt_rows = prompt_attention(self.prompt_visible)
            prompt_rows = torch.cat([prompt_rows, prompt_rows.new_zeros(B, P, M)], 2)
            allowed = torch.cat([prompt_rows, tree_mask], 1)
            out = self.model(input_ids=torch.cat([ids, tree_tokens.clamp(min=0)], 1),
                             attention_mask=additive_mask(allowed, self.model.dtype),
                             position_ids=torch.cat([prompt_pos, tree_pos], 1), use_cache=True, **kwargs)
        self.cache = self._sig.cache_of(out)
        logits = out.logits
        return logits[:, -(M + 1):, :] if logits.shape[1] != M + 1 else logits

    def feed(self, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """Append ``M`` slots per request (``tokens``, ``parents`` ``[B, M]``; padding: parent NOT_TREE) and
        return their logits ``[B, M, V]``. Parents are absolute slot indices (existing or earlier in this feed),
        ROOT for slots hanging off the prompt."""
        M = tokens.shape[1]
        self.slot_parents = torch.cat([self.slot_parents, parents], 1)
        allowed, positions = _ops.tree_attention_mask(self.slot_parents, self.prompt_visible, M)
        out = self.model(input_ids=tokens.clamp(min=0), attention_mask=additive_mask(allowed, self.model.dtype),
                         position_ids=positions,
                         use_cache=True, **{self._sig.cache_arg: self.cache})
        return out.logits

    def compact(self, anchors: torch.Tensor) -> torch.Tensor:
        """Drop every tree slot that is not an ancestor-or-self of an anchor slot (``anchors [B, A]``; ROOT and
        NOT_TREE entries are ignored). The prompt slots stay where they are. Returns ``new_slot [B, S_old]``,
        the new index of each old slot (-1 for dropped ones), for remapping slot references."""
        P = self.prompt_visible.shape[1]
        keep, parents, new_slot, num_kept = _ops.compaction_plan(self.slot_parents, anchors, P)
        S_new = int(num_kept.max()) if num_kept.numel() else P
        self.slot_parents = parents[:, :S_new]
        set_cache_tensors(self.cache, compact_all(cache_tensors(self.cache), keep[:, :S_new]))
        return new_slot

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the given requests (batch rows)."""
        self.cache.batch_select_indices(rows)
        self.slot_parents = self.slot_parents[rows]
        self.prompt_visible = self.prompt_visible[rows]
