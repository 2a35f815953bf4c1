"""Differences between Hugging Face transformers versions that the decoders have to bridge."""

from __future__ import annotations

import inspect

import torch


class ForwardSignature:
    """How to call ``model.forward`` of this transformers version.

    * the KV cache argument is ``cache`` from transformers 5.2x on and ``past_key_values`` before;
    * ``logits_to_keep`` (compute only the last logits during prefill) exists from 4.50 on.
    """

    def __init__(self, model: torch.nn.Module):
        module = getattr(model, "_orig_mod", model)  # torch.compile's wrapper takes *args: read the model's own
        params = inspect.signature(module.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.has_logits_to_keep = "logits_to_keep" in params

    def cache_of(self, output):
        """The cache object a forward returned."""
        return getattr(output, self.cache_arg)


def cache_tensors(cache) -> list[torch.Tensor]:
    """Keys and values of every layer of a dynamic cache, as ``[k0, v0, k1, v1, ...]`` ``[B, H, S, D]`` tensors."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return [t for pair in zip(cache.key_cache, cache.value_cache) for t in pair]


def set_cache_tensors(cache, tensors: list[torch.Tensor]) -> None:
    """Inverse of :func:`cache_tensors`."""
    if hasattr(cache, "layers"):
        for layer, k, v in zip(cache.layers, tensors[0::2], tensors[1::2]):
            layer.keys, layer.values = k, v
    else:
        cache.key_cache[:] = tensors[0::2]
        cache.value_cache[:] = tensors[1::2]
