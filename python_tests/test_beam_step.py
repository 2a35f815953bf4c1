"""trie_beam_step: CPU and CUDA kernels against the reference, odd shapes, ties, missing candidates, opcheck."""

import pytest
import torch

from atspeed_ext import ItemTrie, _ops, reference
from conftest import DEVICES, on_device, random_identifiers, requires_cuda



def make_case(B, W, V, seed, depth=3, codes=5, dtype=torch.float32, dead_frac=0.25, num_items=60):
    g = torch.Generator().manual_seed(seed)
    ids = random_identifiers(num_items, depth, codes, seed=seed)
    ids = ids % V  # keep every token inside the vocabulary
    trie = ItemTrie(ids)
    internal = int(trie.level_offsets[depth])  # nodes 0..internal-1 have children
    logits = (torch.randn(B, W, V, generator=g) * 3).to(dtype)
    scores = -torch.rand(B, W, generator=g) * 5
    nodes = torch.randint(0, internal, (B, W), generator=g)
    live = torch.rand(B, W, generator=g) >= dead_frac
    return logits, scores, nodes, live, trie


def run_both(op, args, num_out, device="cpu"):
    logits, scores, nodes, live, trie = args
    t = trie.to(device)
    dev = [x.to(device) for x in (logits, scores, nodes, live)]
    got = op(*dev, t.child_offsets, t.child_tokens, num_out)
    want = reference.trie_beam_step(logits, scores, nodes, live, trie.child_offsets, trie.child_tokens, num_out)
    return [x.cpu() for x in got], want


def assert_same(got, want):
    for g, w in zip(got, want):
        assert torch.equal(g, w)  # indices exactly, float32 scores bit for bit (NaN never is a score)


SHAPES = [(1, 1, 7, 1), (3, 5, 33, 5), (2, 4, 64, 9), (5, 1, 50, 40), (4, 7, 129, 17), (1, 20, 97, 20), (0, 3, 8, 2)]


@pytest.mark.parametrize("B, W, V, num_out", SHAPES)
@pytest.mark.parametrize("seed", range(4))
def test_cpu_matches_reference(B, W, V, num_out, seed):
    case = make_case(B, W, V, seed)
    assert_same(*run_both(_ops.trie_beam_step, case, num_out))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_cpu_matches_reference_in_every_logit_dtype(dtype):
    for seed in range(3):
        case = make_case(3, 6, 40, seed, dtype=dtype)
        assert_same(*run_both(_ops.trie_beam_step, case, 10))


def test_non_contiguous_inputs():
    logits, scores, nodes, live, trie = make_case(4, 6, 45, seed=11)
    # Same values, other strides: logits through a transpose, the [B, W] inputs as column slices.
    logits_nc = logits.transpose(0, 1).contiguous().transpose(0, 1)
    pad = lambda x: torch.stack([x, x], -1)[..., 0]  # noqa: E731
    assert not logits_nc.is_contiguous() and not pad(scores).is_contiguous()
    want = reference.trie_beam_step(logits, scores, nodes, live, trie.child_offsets, trie.child_tokens, 8)
    got = _ops.trie_beam_step(logits_nc, pad(scores), pad(nodes), pad(live), trie.child_offsets,
                              trie.child_tokens, 8)
    assert_same(got, want)


def test_output_is_sorted_and_consistent_with_the_trie():
    logits, scores, nodes, live, trie = make_case(6, 5, 60, seed=3)
    out_scores, parents, tokens, out_nodes = _ops.trie_beam_step(logits, scores, nodes, live,
                                                                 trie.child_offsets, trie.child_tokens, 12)
    logp = torch.log_softmax(logits.double(), -1)
    for b in range(6):
        valid = parents[b] >= 0
        assert torch.all(out_scores[b][valid][:-1] >= out_scores[b][valid][1:])
        for j in valid.nonzero().flatten().tolist():
            w, t, n = int(parents[b, j]), int(tokens[b, j]), int(out_nodes[b, j])
            assert bool(live[b, w])
            assert int(trie.node_parent[n]) == int(nodes[b, w]) and int(trie.child_tokens[n - 1]) == t
            expect = float(scores[b, w]) + float(logp[b, w, t])
            assert abs(float(out_scores[b, j]) - expect) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_ties_go_to_the_lower_beam_then_the_lower_token(device):
    trie = ItemTrie([[3, 5], [4, 6], [4, 7], [5, 8]])
    node_3, node_4 = trie.node_of([3]), trie.node_of([4])
    logits = torch.zeros(1, 3, 10)  # every token equally likely: all candidates tie
    scores = torch.zeros(1, 3)
    nodes = torch.tensor([[node_4, node_3, node_4]])
    live = torch.ones(1, 3, dtype=torch.bool)
    for op in (on_device(_ops.trie_beam_step, device), reference.trie_beam_step):
        _, parents, tokens, _ = op(logits, scores, nodes, live, trie.child_offsets, trie.child_tokens, 5)
        assert parents.tolist() == [[0, 0, 1, 2, 2]]
        assert tokens.tolist() == [[6, 7, 5, 6, 7]]


@pytest.mark.parametrize("device", DEVICES)
def test_missing_candidates_are_marked_invalid_not_invented(device):
    trie = ItemTrie([[3, 5], [3, 6], [4, 7]])
    logits = torch.randn(2, 2, 9)
    scores = torch.zeros(2, 2)
    nodes = torch.tensor([[trie.node_of([3]), trie.node_of([4])], [trie.node_of([3]), 0]])
    live = torch.tensor([[True, True], [True, False]])
    for op in (on_device(_ops.trie_beam_step, device), reference.trie_beam_step):
        s, p, t, n = op(logits, scores, nodes, live, trie.child_offsets, trie.child_tokens, 5)
        assert (p[0] >= 0).sum() == 3 and (p[1] >= 0).sum() == 2
        assert p[0, 3:].tolist() == [-1, -1] and t[1, 2:].tolist() == [-1] * 3 and n[1, 2:].tolist() == [-1] * 3
        assert torch.isinf(s[0, 3:]).all() and (s[0, 3:] < 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_forbidden_and_nan_logits_are_not_candidates(device):
    trie = ItemTrie([[3], [4], [5]])
    logits = torch.zeros(2, 1, 6)
    logits[0, 0, 4] = float("-inf")
    logits[1, 0, 2] = float("nan")  # a NaN anywhere poisons the row's softmax
    for op in (on_device(_ops.trie_beam_step, device), reference.trie_beam_step):
        s, p, t, n = op(logits, torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.long),
                        torch.ones(2, 1, dtype=torch.bool), trie.child_offsets, trie.child_tokens, 3)
        assert t.tolist() == [[3, 5, -1], [-1, -1, -1]]


def test_bad_arguments_raise():
    logits, scores, nodes, live, trie = make_case(2, 3, 20, seed=0)
    co, ct = trie.child_offsets, trie.child_tokens
    with pytest.raises(RuntimeError, match="num_out must be >= 1"):
        _ops.trie_beam_step(logits, scores, nodes, live, co, ct, 0)
    with pytest.raises(RuntimeError, match="beam_scores must have dtype"):
        _ops.trie_beam_step(logits, scores.double(), nodes, live, co, ct, 2)
    with pytest.raises(RuntimeError, match=r"must be \[B, W\]"):
        _ops.trie_beam_step(logits, scores[:, :2], nodes, live, co, ct, 2)
    with pytest.raises(RuntimeError, match="logits must be a 3-D"):
        _ops.trie_beam_step(logits[0], scores, nodes, live, co, ct, 2)
    with pytest.raises(RuntimeError, match="logits must be float32"):
        _ops.trie_beam_step(logits.long(), scores, nodes, live, co, ct, 2)


def test_live_beams_off_the_trie_raise_and_dead_ones_are_ignored():
    logits, scores, nodes, live, trie = make_case(2, 3, 20, seed=0)
    co, ct = trie.child_offsets, trie.child_tokens
    live = torch.ones_like(live)
    for bad in (-1, trie.num_nodes):
        off_trie = nodes.clone()
        off_trie[1, 2] = bad
        for op in (_ops.trie_beam_step, reference.trie_beam_step):
            with pytest.raises(RuntimeError, match=rf"beam_nodes\[1, 2\] = {bad} is not a trie node in \[0, "
                                                   rf"{trie.num_nodes}\)"):
                op(logits, scores, off_trie, live, co, ct, 4)
        live_but_one = live.clone()
        live_but_one[1, 2] = False  # a dead beam's node is never read
        assert_same(_ops.trie_beam_step(logits, scores, off_trie, live_but_one, co, ct, 4),
                    reference.trie_beam_step(logits, scores, nodes, live_but_one, co, ct, 4))


def test_opcheck():
    for B, W, V, num_out in [(2, 3, 20, 4), (1, 1, 9, 1), (3, 5, 33, 12)]:
        logits, scores, nodes, live, trie = make_case(B, W, V, seed=B)
        torch.library.opcheck(torch.ops.atspeed_ext.trie_beam_step.default,
                              (logits, scores, nodes, live, trie.child_offsets, trie.child_tokens, num_out))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("B, W, V, num_out", SHAPES + [(2, 40, 1000, 40), (3, 64, 300, 70)])
def test_cuda_matches_reference(B, W, V, num_out, dtype):
    for seed in range(3):
        case = make_case(B, W, V, seed, dtype=dtype, codes=40 if W >= 40 else 5, num_items=2000 if W >= 40 else 60)
        assert_same(*run_both(_ops.trie_beam_step, case, num_out, device="cuda"))


@requires_cuda
def test_cuda_large_candidate_sets_use_the_uncached_path():
    # 40 beams x 300 children = 12000 candidates: more than fit in shared memory (about 10000).
    ids = torch.stack([torch.arange(2000) % 300 + 3, torch.arange(2000) // 300 + 3], 1)
    trie = ItemTrie(ids)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 40, 400, generator=g)
    scores = -torch.rand(2, 40, generator=g)
    case = (logits, scores, torch.zeros(2, 40, dtype=torch.long), torch.ones(2, 40, dtype=torch.bool), trie)
    assert_same(*run_both(_ops.trie_beam_step, case, 25, device="cuda"))


@requires_cuda
def test_cuda_opcheck():
    logits, scores, nodes, live, trie = make_case(3, 5, 33, seed=1)
    t = trie.to("cuda")
    torch.library.opcheck(torch.ops.atspeed_ext.trie_beam_step.default,
                          (logits.cuda(), scores.cuda(), nodes.cuda(), live.cuda(), t.child_offsets, t.child_tokens, 7))


def test_no_beams_or_no_tokens_raise_in_both_twins():
    """W = 0 or V = 0: the kernel and the reference refuse alike (the reference used to return empty outputs)."""
    trie = ItemTrie([[3, 5]])
    for W, V in ((0, 8), (1, 0)):
        args = (torch.zeros(2, W, V), torch.zeros(2, W), torch.zeros(2, W, dtype=torch.long),
                torch.ones(2, W, dtype=torch.bool), trie.child_offsets, trie.child_tokens, 2)
        for op in (_ops.trie_beam_step, reference.trie_beam_step):
            with pytest.raises(RuntimeError, match=r"with W >= 1 and V >= 1"):
                op(*args)
