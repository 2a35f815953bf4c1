"""Reference KV-cache compaction (spec of ``torch.ops.atspeed_ext.compact_kv`` and ``compaction_plan``)."""

from __future__ import annotations

import torch

from .tree_mask import NOT_TREE


def compact_kv(caches: list[torch.Tensor], keep: torch.Tensor) -> list[torch.Tensor]:
    """Keep, per request, the cache slots listed in ``keep``, for every layer at once.

    Args:
        caches: tensors ``[B, H, S, D]`` (keys and values of every layer; one shape and dtype).
        keep: ``[B, S_new]`` int64 slot indices into ``S``, in the order they should be kept; ``-1`` marks
            padding, which comes out as zeros.

    Returns:
        tensors ``[B, H, S_new, D]``: ``out[b, :, i] = cache[b, :, keep[b, i]]`` (zeros where ``keep`` is -1).
    """
    out = []
    valid = (keep >= 0)[:, None, :, None]
    for cache in caches:
        B, H, S, D = cache.shape
        if S == 0:  # nothing to gather from: every kept slot is padding
            out.append(cache.new_zeros(B, H, keep.shape[1], D))
            continue
        index = keep.clamp(min=0)[:, None, :, None].expand(B, H, keep.shape[1], D)
        out.append(torch.where(valid, cache.gather(2, index), torch.zeros((), dtype=cache.dtype, device=cache.device)))
    return out


def compaction_plan(slot_parents: torch.Tensor, anchors: torch.Tensor,
                    num_prompt: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which slots of a tree-shaped KV cache a compaction keeps, and where they go.

    Args:
        slot_parents: ``[B, S]`` int64 parent pointers as in ``tree_attention_mask``: an earlier tree slot
            (``>= num_prompt``), ``ROOT`` (-1) or ``NOT_TREE`` (-2).
        anchors: ``[B, A]`` int64 slots to keep with all their ancestors; negative entries are ignored.
        num_prompt: the first ``num_prompt`` slots (the prompts) are always kept.

    A slot is kept if it is a prompt slot or on the chain (itself and its ancestors) of an anchor. Kept slots
    keep their order.

    Returns:
        ``keep [B, S]``: the old slot of the i-th kept slot, ``-1`` from ``num_kept[b]`` on;
        ``new_parents [B, S]``: the parent pointer of the i-th kept slot in the new numbering (``ROOT`` and
        ``NOT_TREE`` unchanged), ``NOT_TREE`` from ``num_kept[b]`` on;
        ``new_slot [B, S]``: the new index of each old slot, ``-1`` if dropped;
        ``num_kept [B]``: how many slots each request keeps.
    """
    B, S = slot_parents.shape
    parents, anchor_rows = slot_parents.tolist(), anchors.tolist()
    keep = [[-1] * S for _ in range(B)]
    new_parents = [[NOT_TREE] * S for _ in range(B)]
    new_slot = [[-1] * S for _ in range(B)]
    num_kept = [0] * B
    for b in range(B):
        kept = [s < num_prompt for s in range(S)]
        for s in anchor_rows[b]:
            while s >= 0:
                kept[s] = True
                s = parents[b][s]
        order = [s for s in range(S) if kept[s]]
        for i, s in enumerate(order):
            new_slot[b][s] = i
        for i, s in enumerate(order):
            p = parents[b][s]
            keep[b][i], new_parents[b][i] = s, new_slot[b][p] if p >= 0 else p
        num_kept[b] = len(order)
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=slot_parents.device).view(B, S)  # noqa: E731
    return as_tensor(keep), as_tensor(new_parents), as_tensor(new_slot), torch.tensor(
        num_kept, dtype=torch.long, device=slot_parents.device)
