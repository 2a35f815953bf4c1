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
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.has_logits_to_keep = "logits_to_keep" in params

    def cache_of(self, output):
        """The cache object a forward returned."""
        return getattr(output, self.cache_arg)
