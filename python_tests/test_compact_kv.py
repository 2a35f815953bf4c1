"""compact_kv and compaction_plan: CPU and CUDA kernels against the reference, every layer at once, padding,
hand-built trees, bad arguments, opcheck."""

import pytest
import torch

from atspeed_ext import _ops, reference
from atspeed_ext.reference import NOT_TREE, ROOT
from conftest import random_tree_cache, requires_cuda


def make_case(B, H, S, D, S_new, layers, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    caches = [torch.randn(B, H, S, D, generator=g).to(dtype) for _ in range(2 * layers)]
    if S_new <= S and B > 0:
        keep = torch.stack([torch.randperm(S, generator=g)[:S_new].sort().values for _ in range(B)])
    else:
        keep = torch.randint(0, S, (B, S_new), generator=g)
    keep[torch.rand(B, S_new, generator=g) < 0.2] = -1
    return caches, keep


@pytest.mark.parametrize("B, H, S, D, S_new, layers", [(1, 1, 1, 1, 1, 1), (2, 3, 17, 8, 9, 2), (3, 2, 40, 64, 40, 4),
                                                        (2, 4, 10, 5, 13, 1), (0, 2, 5, 4, 3, 2), (2, 2, 6, 4, 0, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_matches_reference(B, H, S, D, S_new, layers, dtype):
    caches, keep = make_case(B, H, S, D, S_new, layers, seed=S, dtype=dtype)
    got, want = _ops.compact_kv(caches, keep), reference.compact_kv(caches, keep)
    assert len(got) == len(want) == 2 * layers
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_keeps_the_listed_slots_in_order():
    cache = torch.arange(2 * 1 * 4 * 2, dtype=torch.float32).view(2, 1, 4, 2)
    keep = torch.tensor([[3, 0, -1], [1, 2, 2]])
    (out,) = _ops.compact_kv([cache], keep)
    assert out[0, 0].tolist() == [[6, 7], [0, 1], [0, 0]]
    assert out[1, 0].tolist() == [[10, 11], [12, 13], [12, 13]]


def test_non_contiguous_caches():
    """Read in place through the strides (a compiled model's prefill leaves [B, S, H, D] memory order; sliced,
    offset and broadcast heads too) or, where a slot's values are not contiguous, copied first."""
    caches, keep = make_case(2, 3, 12, 8, 6, 2, seed=1)
    wide = torch.randn(2, 3, 12, 16, generator=torch.Generator().manual_seed(2))
    layouts = {"[B, S, H, D] order": [c.transpose(1, 2).contiguous().transpose(1, 2) for c in caches],
               "strided values": [c.transpose(2, 3).contiguous().transpose(2, 3) for c in caches],
               "offset slice": [wide[..., 8:], wide[..., :8]],
               "broadcast head": [c[:, :1].expand(2, 3, 12, 8) for c in caches]}
    for name, nc in layouts.items():
        assert not nc[0].is_contiguous(), name
        want = reference.compact_kv([c.contiguous() for c in nc], keep)
        for g, w in zip(_ops.compact_kv(nc, keep), want):
            assert g.is_contiguous() and torch.equal(g, w), name


def test_bad_arguments_raise():
    caches, keep = make_case(2, 2, 5, 4, 3, 1, seed=0)
    with pytest.raises(RuntimeError, match=r"keep\[0, 1\] = 5 is not a slot index in \[-1, 5\)"):
        _ops.compact_kv(caches, torch.tensor([[0, 5, 1], [0, 1, 2]]))
    with pytest.raises(RuntimeError, match="must be \\[B, H, S, D\\]"):
        _ops.compact_kv([caches[0][0]], keep)
    with pytest.raises(RuntimeError, match="shape and dtype of caches\\[0\\]"):
        _ops.compact_kv([caches[0], caches[1].double()], keep)
    with pytest.raises(RuntimeError, match="has batch 2 but keep has 1"):
        _ops.compact_kv(caches, keep[:1])


def test_opcheck():
    caches, keep = make_case(2, 3, 11, 8, 7, 2, seed=2)
    torch.library.opcheck(torch.ops.atspeed_ext.compact_kv.default, (caches, keep))


@requires_cuda
@pytest.mark.parametrize("D, dtype", [(64, torch.float32), (128, torch.bfloat16), (5, torch.float16)])
def test_cuda_matches_cpu(D, dtype):
    caches, keep = make_case(3, 4, 50, D, 30, 70, seed=D, dtype=dtype)   # 140 tensors: more than one launch
    got = _ops.compact_kv([c.cuda() for c in caches], keep.cuda())
    for g, w in zip(got, _ops.compact_kv(caches, keep)):
        assert torch.equal(g.cpu(), w)


def random_anchors(parents, A, seed):
    """A anchors per request: random slots (tree, prompt and padding ones), repeats, and negative codes (ROOT,
    NOT_TREE and -3, the decoder's NOT_FED) that are ignored."""
    g = torch.Generator().manual_seed(seed)
    B, S = parents.shape
    anchors = torch.randint(0, max(S, 1), (B, A), generator=g) if S else torch.full((B, A), ROOT)
    negative = torch.tensor([ROOT, NOT_TREE, -3])[torch.randint(0, 3, (B, A), generator=g)]
    return torch.where(torch.rand(B, A, generator=g) < 0.3, negative, anchors)


def long_chain(B, P, S):
    """Tree slots P..S-1 each the child of the one before: one chain of depth S - P."""
    parents = torch.full((B, S), NOT_TREE, dtype=torch.long)
    if S > P:
        parents[:, P] = ROOT
        parents[:, P + 1:] = torch.arange(P, S - 1)
    return parents


@pytest.mark.parametrize("B, P, S, A", [(1, 4, 6, 2), (3, 7, 30, 5), (2, 0, 12, 4), (4, 10, 10, 3), (5, 3, 60, 10),
                                        (2, 5, 9, 0), (0, 3, 8, 2), (2, 0, 0, 3)])
@pytest.mark.parametrize("seed", range(3))
def test_plan_cpu_matches_reference(B, P, S, A, seed):
    parents, _ = random_tree_cache(B, P, S, seed)
    anchors = random_anchors(parents, A, seed)
    got, want = _ops.compaction_plan(parents, anchors, P), reference.compaction_plan(parents, anchors, P)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_plan_of_a_hand_built_tree():
    # prompt [x, y] | a (root) | b (child of a) | c (root) | pad | d (child of b) | e (child of c)
    parents = torch.tensor([[NOT_TREE, NOT_TREE, ROOT, 2, ROOT, NOT_TREE, 3, 4]])
    anchors = torch.tensor([[6, NOT_TREE, 3, ROOT]])  # d (and its chain a, b), b again, nothing, nothing
    for op in (_ops.compaction_plan, reference.compaction_plan):
        keep, new_parents, new_slot, num_kept = op(parents, anchors, 2)
        assert num_kept.tolist() == [5]
        assert keep.tolist() == [[0, 1, 2, 3, 6, -1, -1, -1]]                   # x, y, a, b, d
        assert new_parents.tolist() == [[NOT_TREE, NOT_TREE, ROOT, 2, 3, NOT_TREE, NOT_TREE, NOT_TREE]]
        assert new_slot.tolist() == [[0, 1, 2, 3, -1, -1, 4, -1]]


def test_plan_then_compact_keeps_the_chains_and_their_mask():
    """Compacting by the plan leaves each anchor with the same visible slots (prompt + chain), renumbered."""
    parents, visible = random_tree_cache(3, 6, 40, seed=7)
    anchors = random_anchors(parents, 6, seed=7)
    keep, new_parents, new_slot, num_kept = _ops.compaction_plan(parents, anchors, 6)
    S_new = int(num_kept.max())
    keep, new_parents = keep[:, :S_new], new_parents[:, :S_new]
    old_mask, _ = _ops.tree_attention_mask(parents, visible, 40 - 6)
    new_mask, _ = _ops.tree_attention_mask(new_parents, visible, S_new - 6)
    checked = 0
    for b in range(3):
        for a in anchors[b].tolist():
            if a < 6 or parents[b, a] == NOT_TREE:  # only tree slots have a chain (and a mask row of their own)
                continue
            seen_old = set(old_mask[b, a - 6].nonzero().flatten().tolist())
            seen_new = set(keep[b, new_mask[b, int(new_slot[b, a]) - 6].nonzero().flatten()].tolist())
            assert seen_new == seen_old
            checked += 1
    assert checked >= 6
    # ... and compact_kv moves each kept slot's row to its new place: the rows an anchor sees are the same.
    cache = torch.randn(3, 2, 40, 4, generator=torch.Generator().manual_seed(7))
    compacted = _ops.compact_kv([cache], keep)[0]
    for b in range(3):
        kept = keep[b] >= 0
        assert torch.equal(compacted[b][:, kept], cache[b][:, keep[b][kept]])


def test_plan_bad_arguments_raise():
    parents = torch.tensor([[NOT_TREE, NOT_TREE, ROOT, 2]])
    with pytest.raises(RuntimeError, match="a parent must be"):
        _ops.compaction_plan(torch.tensor([[NOT_TREE, NOT_TREE, 3, ROOT]]), torch.tensor([[3]]), 2)
    with pytest.raises(RuntimeError, match=r"anchors\[0, 1\] = 4 is not a slot \(S = 4\)"):
        _ops.compaction_plan(parents, torch.tensor([[3, 4]]), 2)
    with pytest.raises(RuntimeError, match="need 0 <= num_prompt <= S"):
        _ops.compaction_plan(parents, torch.tensor([[3]]), 5)
    with pytest.raises(RuntimeError, match="anchors must be \\[B, A\\] with B = 1"):
        _ops.compaction_plan(parents, torch.tensor([[3], [3]]), 2)


def test_plan_opcheck():
    parents, _ = random_tree_cache(3, 5, 20, seed=1)
    torch.library.opcheck(torch.ops.atspeed_ext.compaction_plan.default, (parents, random_anchors(parents, 4, 1), 5))


def test_plan_of_a_chain_deeper_than_a_cuda_block():
    parents = long_chain(2, 3, 300)
    anchors = torch.tensor([[299], [150]])
    for op in (_ops.compaction_plan, reference.compaction_plan):
        keep, new_parents, new_slot, num_kept = op(parents, anchors, 3)
        assert num_kept.tolist() == [300, 151]
        assert keep[1, :151].tolist() == list(range(151)) and (keep[1, 151:] == -1).all()
        assert new_parents[0].tolist() == parents[0].tolist()


PLAN_CUDA_CASES = [(1, 4, 6, 2), (3, 7, 30, 5), (4, 10, 10, 3), (0, 3, 8, 2), (2, 5, 9, 0), (2, 0, 0, 3),
                   (2, 3, 128, 6), (2, 3, 129, 6), (5, 300, 700, 40)]


@requires_cuda
@pytest.mark.parametrize("B, P, S, A", PLAN_CUDA_CASES)
def test_plan_cuda_matches_cpu(B, P, S, A):
    parents, _ = random_tree_cache(B, P, S, seed=S)
    for parents in (parents, long_chain(B, P, S)):   # random trees; one chain deeper than a CUDA block is wide
        anchors = random_anchors(parents, A, seed=S)
        got = _ops.compaction_plan(parents.cuda(), anchors.cuda(), P)
        for g, w in zip(got, _ops.compaction_plan(parents, anchors, P)):
            assert torch.equal(g.cpu(), w)


@requires_cuda
def test_plan_cuda_opcheck():
    parents, _ = random_tree_cache(3, 5, 20, seed=1)
    torch.library.opcheck(torch.ops.atspeed_ext.compaction_plan.default,
                          (parents.cuda(), random_anchors(parents, 4, 1).cuda(), 5))


def test_an_empty_cache_compacts_to_padding_in_both_twins():
    """S = 0 with every kept slot padding (-1): zeros from both twins (the reference used to raise from gather)."""
    cache, keep = torch.zeros(2, 3, 0, 4), torch.full((2, 5), -1)
    for op in (_ops.compact_kv, reference.compact_kv):
        out, = op([cache], keep)
        assert out.shape == (2, 3, 5, 4) and not out.any()
