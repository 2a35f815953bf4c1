"""Refuse, with a clear message, to load the extension under a torch other than the one it was built against."""

from __future__ import annotations

import torch


def _release(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def check_torch_matches_build() -> None:
    try:
        from ._build_info import TORCH_VERSION
    except ImportError as exc:  # a source checkout that was never built
        raise ImportError(
            "atspeed_ext is not built: install it with `pip install --no-build-isolation .` after installing "
            "torch (or you are importing the source folder from the repository root)"
        ) from exc
    if _release(TORCH_VERSION) != _release(torch.__version__):
        raise ImportError(
            f"atspeed_ext was built against torch {TORCH_VERSION} but torch {torch.__version__} is installed; "
            "rebuild it against this torch with `pip install --no-build-isolation --force-reinstall --no-deps .`"
        )
