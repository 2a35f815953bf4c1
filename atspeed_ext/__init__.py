"""atspeed_ext: fast trie-constrained (speculative) beam search for LLM-based generative recommendation.

Hot paths are C++ (CPU) and CUDA kernels registered as ``torch.ops.atspeed_ext.*``; each has a
pure-PyTorch twin in :mod:`atspeed_ext.reference`.
"""

import torch  # noqa: F401  (the extension links against the loaded torch)

from ._build_check import check_torch_matches_build

check_torch_matches_build()

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "atspeed_ext's compiled extension (atspeed_ext._C) could not be loaded; rebuild it with "
        f"`pip install --no-build-isolation .` against the installed torch. Cause: {exc}"
    ) from exc
from ._ops import trie_beam_step
from .cpu_prepack import prepack_for_cpu
from .decoder import BeamSearchDecoder, BeamSearchOutput
from .spec_decoder import SpecBeamDecoder, SpecBeamOutput, SpecStats
from .trie import ItemTrie

__version__ = "0.1.0"

__all__ = ["ItemTrie", "BeamSearchDecoder", "BeamSearchOutput", "SpecBeamDecoder", "SpecBeamOutput", "SpecStats",
           "trie_beam_step", "built_with_cuda", "prepack_for_cpu"]


def built_with_cuda() -> bool:
    """Whether this build of the extension contains the CUDA kernels."""
    return _C.built_with_cuda()
