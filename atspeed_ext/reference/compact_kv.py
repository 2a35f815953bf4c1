"""Reference KV-cache compaction (spec of ``torch.ops.atspeed_ext.compact_kv``)."""

from __future__ import annotations

import torch


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
        index = keep.clamp(min=0)[:, None, :, None].expand(B, H, keep.shape[1], D)
        out.append(torch.where(valid, cache.gather(2, index), torch.zeros((), dtype=cache.dtype, device=cache.device)))
    return out
