"""NVTX ranges around decoding phases, so ``nsys profile`` shows draft / target / verify / compact on a GPU."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def nvtx_range(name: str, device: torch.device):
    """An NVTX range on CUDA devices; nothing elsewhere."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.nvtx.range_push(name)
    try:
        yield
    finally:
        torch.cuda.nvtx.range_pop()
