"""Opt-in CPU speed-up for bfloat16 models: every ``nn.Linear``'s weight packed once for oneDNN.

On a CPU, a bfloat16 ``nn.Linear`` re-lays its weight out for oneDNN on every call: for the few tokens a decoding
step feeds, that is most of the call (a 512 x 1408 linear on this repository's AMX Xeon: ~75 us at 10 tokens, ~37
us packed once). Packing once makes both decoders about 13-15% faster on the Beauty target-8x512 (README).
Inference only: no gradient reaches a packed layer or flows through it. The packed copy follows the weight through
``load_state_dict``, copies and pickles (packed again at the next call); after ``.to()`` / ``.float()`` to another
device or dtype the next call refuses with an error that says to load the model again. Other in-place writes to a
weight are not seen.
"""

from __future__ import annotations

import torch

__all__ = ["prepack_for_cpu", "PackedLinear"]


def _packing_available() -> bool:
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear(torch.nn.Module):
    """An ``nn.Linear`` whose weight is packed for oneDNN once. It keeps the original ``weight`` and ``bias``
    parameters (state dicts and tied embeddings are unchanged); the packed copy is not saved."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self._packed = None
        self._pack()

    def _pack(self) -> None:
        if self.weight.dtype != torch.bfloat16:
            raise RuntimeError(f"this linear layer was packed for bfloat16 (prepack_for_cpu) but its weight is now "
                               f"{self.weight.dtype}; load the model again to run it in another dtype")
        with torch.no_grad():
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError(f"this linear layer was packed for the CPU (prepack_for_cpu) but got an input on "
                               f"{x.device}; load the model again to run it elsewhere")
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad
                                        or (self.bias is not None and self.bias.requires_grad)):
            raise RuntimeError("a layer packed by prepack_for_cpu is for inference only (no gradient flows through "
                               "it): run it under torch.no_grad() or torch.inference_mode()")
        if torch.compiler.is_compiling():  # Inductor cannot lower a packed weight that is a module attribute; it
            return torch.nn.functional.linear(x, self.weight, self.bias)  # packs weights itself (with freezing)
        if self._packed is None:  # copied, pickled, loaded or moved since it was packed
            self._pack()
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, bias, "none", [], "")

    # The packed copy is dropped wherever the weight may change or move (packed again at the next call; a check
    # of the weight's version at every call would cost ~2 us per layer): load_state_dict, .to() / .float() /
    # .half(), copies and pickles (an opaque oneDNN tensor can be neither). In-place writes to the weight by
    # other means are not seen.
    def _load_from_state_dict(self, *args, **kwargs):
        self._packed = None
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._packed = None
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def prepack_for_cpu(model: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` of a bfloat16 CPU model by a :class:`PackedLinear`, in place; returns how many.

    Use it on a model that only decodes (``BeamSearchDecoder``, ``SpecBeamDecoder``, Hugging Face ``generate``):
    every caller of the model then gets the packed layers. Outputs agree with the unpacked model's up to bfloat16
    rounding (the same oneDNN arithmetic; identical on the Beauty models here).

    Raises:
        ValueError: a parameter is not on the CPU, or the linear layers are not bfloat16 (float32 layers run
            faster unpacked at a few tokens, through MKL).
        RuntimeError: this torch build has no oneDNN (mkldnn) linear ops.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, p in model.named_parameters():
        if p.device.type != "cpu":
            raise ValueError(f"prepack_for_cpu needs a CPU model, but parameter {name!r} is on {p.device}")
    linears = [(parent, child_name, child) for parent in model.modules()
               for child_name, child in parent.named_children() if type(child) is torch.nn.Linear]
    for parent, child_name, child in linears:
        if child.weight.dtype != torch.bfloat16:
            raise ValueError(f"prepack_for_cpu speeds up bfloat16 linear layers only; {child_name!r} is "
                             f"{child.weight.dtype} (float32 layers are faster unpacked at a few tokens)")
    if linears and not _packing_available():
        raise RuntimeError("this torch build has no oneDNN (mkldnn) linear ops: prepack_for_cpu cannot pack")
    for parent, child_name, child in linears:
        setattr(parent, child_name, PackedLinear(child))
    return len(linears)
