"""A one-line description of the machine a result was measured on (for reports and benchmark files)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

__all__ = ["machine_name"]


def machine_name(device: str | torch.device | None = None) -> str:
    """The GPU's name for a CUDA device (the current GPU when ``device`` is None and one is available), else the
    CPU model from ``/proc/cpuinfo`` (the platform's processor name elsewhere) and torch's thread count."""
    on_gpu = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if on_gpu:
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads"
