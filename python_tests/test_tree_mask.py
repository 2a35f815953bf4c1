"""tree_attention_mask: CPU and CUDA kernels against the reference, hand-built trees, bad pointers, opcheck."""

import pytest
import torch

from atspeed_ext import _ops, reference
from atspeed_ext.reference import NOT_TREE, ROOT
from conftest import random_tree_cache, requires_cuda


@pytest.mark.parametrize("B, P, S, Q", [(1, 4, 6, 2), (3, 7, 20, 9), (2, 0, 5, 5), (4, 10, 10, 0), (5, 3, 40, 17)])
@pytest.mark.parametrize("seed", range(3))
def test_cpu_matches_reference(B, P, S, Q, seed):
    parents, visible = random_tree_cache(B, P, S, seed)
    got = _ops.tree_attention_mask(parents, visible, Q)
    want = reference.tree_attention_mask(parents, visible, Q)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_hand_built_tree():
    # prompt [pad, x, y] | a (root) | b (child of a) | c (root) | pad | d (child of b)
    parents = torch.tensor([[NOT_TREE, NOT_TREE, NOT_TREE, ROOT, 3, ROOT, NOT_TREE, 4]])
    visible = torch.tensor([[False, True, True]])
    for op in (_ops.tree_attention_mask, reference.tree_attention_mask):
        mask, pos = op(parents, visible, 5)
        assert mask[0].int().tolist() == [
            [0, 1, 1, 1, 0, 0, 0, 0],  # slot 3 (a): prompt + a
            [0, 1, 1, 1, 1, 0, 0, 0],  # slot 4 (b): prompt + a + b
            [0, 1, 1, 0, 0, 1, 0, 0],  # slot 5 (c): prompt + c
            [0, 0, 0, 0, 0, 0, 1, 0],  # slot 6 (padding): itself only
            [0, 1, 1, 1, 1, 0, 0, 1],  # slot 7 (d): prompt + a + b + d
        ]
        assert pos.tolist() == [[2, 3, 2, 0, 4]]  # prompt length 2 + depth - 1


def test_bad_parent_pointers_raise_on_cpu():
    visible = torch.ones(1, 2, dtype=torch.bool)
    for bad in ([NOT_TREE, NOT_TREE, 3, ROOT],      # forward pointer
                [NOT_TREE, NOT_TREE, 0, ROOT],      # points into the prompt
                [NOT_TREE, NOT_TREE, -5, ROOT]):    # unknown code
        with pytest.raises(RuntimeError, match="a parent must be"):
            _ops.tree_attention_mask(torch.tensor([bad]), visible, 2)
    with pytest.raises(RuntimeError, match="P \\+ num_queries <= S"):
        _ops.tree_attention_mask(torch.full((1, 4), NOT_TREE), visible, 3)


def test_opcheck():
    parents, visible = random_tree_cache(3, 5, 14, seed=1)
    torch.library.opcheck(torch.ops.atspeed_ext.tree_attention_mask.default, (parents, visible, 6))


@requires_cuda
@pytest.mark.parametrize("B, P, S, Q", [(1, 4, 6, 2), (3, 7, 20, 9), (2, 0, 5, 5), (5, 300, 700, 200)])
def test_cuda_matches_reference(B, P, S, Q):
    parents, visible = random_tree_cache(B, P, S, seed=B)
    got = _ops.tree_attention_mask(parents.cuda(), visible.cuda(), Q)
    want = _ops.tree_attention_mask(parents, visible, Q)
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
