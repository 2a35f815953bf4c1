"""Reference tree attention mask and positions (spec of ``torch.ops.atspeed_ext.tree_attention_mask``)."""

from __future__ import annotations

import torch

#: ``slot_parents`` codes besides a parent slot index.
ROOT = -1      # a tree slot attached directly to the prompt
NOT_TREE = -2  # a prompt token, a pad token or a padding query: never part of a chain


def tree_attention_mask(slot_parents: torch.Tensor, prompt_visible: torch.Tensor,
                        num_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mask and position ids of the last ``num_queries`` slots of a tree-shaped KV cache.

    Each request's cache is a row of ``S`` slots: ``P`` prompt slots first, then tree slots.
    ``slot_parents[b, s]`` is the slot of the parent of tree slot ``s`` (a tree slot, ``P <= parent < s``),
    ``ROOT`` (-1) if it hangs directly off the prompt, or ``NOT_TREE`` (-2) for prompt and padding slots.
    ``prompt_visible [B, P]`` says which prompt slots hold real tokens (left padding is not visible); every
    query of the request sees them. ``P <= S - num_queries``.

    A query slot ``q`` (one of the last ``num_queries``) may attend to every visible prompt slot and to the
    slots of its chain (itself and its ancestors); its position id is ``prompt_length + len(chain) - 1``
    where ``prompt_length`` is the number of visible prompt slots. A ``NOT_TREE`` query (padding) sees only
    itself and gets position 0.

    Returns ``(mask [B, num_queries, S] bool, positions [B, num_queries] int64)``.
    """
    B, S = slot_parents.shape
    first = S - num_queries
    parents = slot_parents.tolist()
    prompt = torch.zeros(B, S, dtype=torch.bool, device=slot_parents.device)
    prompt[:, :prompt_visible.shape[1]] = prompt_visible
    mask = prompt.unsqueeze(1).repeat(1, num_queries, 1)
    positions = torch.zeros(B, num_queries, dtype=torch.long, device=slot_parents.device)
    prompt_lengths = prompt.sum(1).tolist()
    for b in range(B):
        for i in range(num_queries):
            q = first + i
            if parents[b][q] == NOT_TREE:
                mask[b, i] = False
                mask[b, i, q] = True
                continue
            s, depth = q, 0
            while s >= 0:
                mask[b, i, s] = True
                depth += 1
                s = parents[b][s]
            positions[b, i] = prompt_lengths[b] + depth - 1
    return mask, positions
