"""Seeded blocks of torch's global random number generators, without disturbing the caller's."""

from __future__ import annotations

import contextlib
import hashlib

import torch


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | str | None = None):
    """Run the block with torch's global generators seeded with ``seed`` (any Python int: it is hashed into the
    range torch accepts). Afterwards the CPU generator, and ``device``'s when it is a CUDA device, are back in
    the state they had; other accelerators' generators are left reseeded (``torch.manual_seed`` seeds them all)."""
    device = torch.device(device) if device is not None else None
    devices = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed if 0 <= seed < 2 ** 63 else mixed_seed(seed))
        yield


def mixed_seed(*parts: int) -> int:
    """A seed in [0, 2^63) that depends on every part (e.g. a run's seed, a step and a rank)."""
    text = ":".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1
