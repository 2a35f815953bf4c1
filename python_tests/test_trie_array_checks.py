"""The CPU kernels refuse trie arrays that do not describe a trie over the logits' vocabulary (they index
child_tokens and logits without bounds checks), and logits with an empty vocabulary."""

import pytest
import torch

from atspeed_ext import _ops

# A valid trie: root -> tokens 1, 3; each of those -> token 2 (leaves). Edge e leads to node e + 1.
CO = torch.tensor([0, 2, 3, 4, 4, 4])
CT = torch.tensor([1, 3, 2, 2])
V = 4


def call(op: str, co: torch.Tensor, ct: torch.Tensor, vocab: int = V):
    """Run ``op`` for one request with two live beams at the root (K = 2, N = 2, one drafted level)."""
    B, K, N = 1, 2, 2
    logits = torch.randn(B, K, vocab, generator=torch.Generator().manual_seed(0))
    scores, nodes, live = torch.zeros(B, K), torch.zeros(B, K, dtype=torch.long), torch.ones(B, K, dtype=torch.bool)
    if op == "trie_beam_step":
        return _ops.trie_beam_step(logits, scores, nodes, live, co, ct, N)
    if op == "trie_beam_sample":
        uniforms = torch.full((B, K, 8), 0.5, dtype=torch.float64)
        return _ops.trie_beam_sample(logits, scores, nodes, live, co, ct, uniforms, 1.0, N)
    rows = torch.zeros(B, K, dtype=torch.long)
    level = (torch.full((B, 1, N), -1), torch.zeros(B, 1, N, dtype=torch.long), torch.zeros(B, 1, N, dtype=torch.long))
    num_levels = torch.zeros(B, dtype=torch.long)
    if op == "strict_verify":
        return _ops.strict_verify(logits, rows, scores, nodes, live, *level, num_levels, co, ct)
    draft = (torch.zeros(B, 1, K, vocab), torch.zeros(B, 1, K), torch.full((B, 2, 2 * N + K), 0.5, dtype=torch.float64))
    return getattr(_ops, op)(logits, rows, scores, nodes, live, *level, num_levels, *draft, co, ct, 1.0)


OPS = ["trie_beam_step", "trie_beam_sample", "strict_verify", "relaxed_verify", "exact_verify"]


@pytest.mark.parametrize("op", OPS)
def test_a_valid_trie_passes(op):
    call(op, CO, CT)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("co, ct, message", [
    (CO, torch.tensor([1, 7, 2, 2]), r"child_tokens\[1\] = 7 is not a token of the logits' vocabulary \[0, 4\)"),
    (CO, torch.tensor([-1, 3, 2, 2]), r"child_tokens\[0\] = -1 is not a token"),
    (torch.tensor([0, 6, 6, 6, 6, 6]), CT, "child_offsets must run from 0 to the number of edges 4, got 0 .. 6"),
    (torch.tensor([0, 2, 1, 4, 4, 4]), CT, r"non-decreasing, got child_offsets\[1\] = 2 > child_offsets\[2\] = 1"),
])
def test_malformed_trie_arrays_raise(op, co, ct, message):
    with pytest.raises(RuntimeError, match=message):
        call(op, co, ct)


@pytest.mark.parametrize("op", OPS)
def test_an_empty_vocabulary_raises(op):
    with pytest.raises(RuntimeError, match="V >= 1"):
        call(op, CO, CT, vocab=0)
