"""Catch a model whose logits hold NaN or +inf in a row a decoder ranks.

One such value makes the row's full-vocabulary log-softmax NaN, so the beam ops find no valid candidate and the
request would come back as invalid beams (-1 tokens, -inf scores), indistinguishable from a trie with fewer than
K items. The decoders record it on the device, with no host sync per step, and raise once at the end of
``generate``. Rows the decoders never rank (padding slots, dead beams) are not looked at: a fully masked padding
row may legitimately be NaN. SpecBeamDecoder looks at every live node of its tree, not only those its verification
reaches (the op does not report which it read), so it can refuse a model whose NaN row BeamSearchDecoder never
reaches: that model is broken at a prefix the draft proposed."""

from __future__ import annotations

import torch


class LogitWatch:
    """Whether any model gave NaN or +inf logits in a row that was read (models by label: "the draft model")."""

    def __init__(self):
        self._seen: dict[str, torch.Tensor] = {}   # model label -> device bool

    def check(self, label: str, logits: torch.Tensor, read: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Record whether ``logits`` [B, R, V] holds NaN or +inf in a row that was read: row ``rows[b, i]`` where
        ``read[b, i]`` (both [B, M]; without ``rows``, row i itself). -inf is a legitimate logit: a model may
        mask tokens with it."""
        bad = ~(logits.amax(-1) < float("inf"))         # [B, R]: the max is NaN or +inf iff the row holds one
        if rows is not None:
            bad = bad.gather(1, rows)
        hit = (bad & read).any()
        self._seen[label] = self._seen[label] | hit if label in self._seen else hit

    def raise_if_seen(self) -> None:
        """A FloatingPointError naming each model that gave such logits (one host sync for all of them)."""
        if not self._seen:
            return
        labels = list(self._seen)
        flags = torch.stack([self._seen[label] for label in labels]).tolist()
        bad = [label for label, flag in zip(labels, flags) if flag]
        if bad:
            raise FloatingPointError(
                f"{' and '.join(bad)} produced NaN or +inf logits for a beam or tree node it scored, so the "
                "candidates below it have no scores. Check the weights, and the dtype: float16 activations can "
                "overflow.")
