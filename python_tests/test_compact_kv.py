"""compact_kv: CPU and CUDA kernels against the reference, every layer at once, padding, opcheck."""

import pytest
import torch

from atspeed_ext import _ops, reference
from conftest import requires_cuda


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
    caches, keep = make_case(2, 3, 12, 8, 6, 2, seed=1)
    nc = [c.transpose(1, 2).contiguous().transpose(1, 2) for c in caches]
    assert not nc[0].is_contiguous()
    for g, w in zip(_ops.compact_kv(nc, keep), reference.compact_kv(caches, keep)):
        assert torch.equal(g, w)


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
