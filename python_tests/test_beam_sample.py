"""trie_beam_sample: CPU (and CUDA) kernels against the reference, draw order, zero-probability candidates,
missing candidates, errors, opcheck. (Its sampling distribution is tested in test_sampling_stats.py.)"""

import pytest
import torch

from atspeed_ext import ItemTrie, _ops, reference
from conftest import DEVICES, on_device, random_identifiers, requires_cuda


def make_case(B, W, V, seed, depth=3, codes=5, dtype=torch.float32, dead_frac=0.25, num_items=60):
    g = torch.Generator().manual_seed(seed)
    trie = ItemTrie(random_identifiers(num_items, depth, codes, seed=seed) % V)
    internal = int(trie.level_offsets[depth])  # nodes 0..internal-1 have children
    logits = (torch.randn(B, W, V, generator=g) * 3).to(dtype)
    scores = -torch.rand(B, W, generator=g) * 5
    nodes = torch.randint(0, internal, (B, W), generator=g)
    live = torch.rand(B, W, generator=g) >= dead_frac
    uniforms = torch.rand(B, W, trie.max_children, generator=g, dtype=torch.float64)
    return [logits, scores, nodes, live, trie.child_offsets, trie.child_tokens, uniforms]


def assert_same(got, want):
    for g, w in zip(got, want):
        assert torch.equal(g, w)  # indices exactly, float32 scores bit for bit


SHAPES = [(1, 1, 7, 1), (3, 5, 33, 5), (2, 4, 64, 9), (5, 1, 50, 40), (4, 7, 129, 17), (1, 20, 97, 20), (0, 3, 8, 2)]


@pytest.mark.parametrize("B, W, V, num_out", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.3, 4.0])
def test_cpu_matches_reference(B, W, V, num_out, temperature):
    for seed in range(3):
        case = make_case(B, W, V, seed)
        assert_same(_ops.trie_beam_sample(*case, temperature, num_out),
                    reference.trie_beam_sample(*case, temperature, num_out))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_every_logit_dtype(dtype):
    for seed in range(3):
        case = make_case(3, 6, 40, seed, dtype=dtype)
        assert_same(_ops.trie_beam_sample(*case, 1.0, 10), reference.trie_beam_sample(*case, 1.0, 10))


def test_non_contiguous_inputs():
    case = make_case(4, 6, 45, seed=11)
    want = reference.trie_beam_sample(*case, 0.8, 8)
    nc = list(case)
    nc[0] = case[0].transpose(0, 1).contiguous().transpose(0, 1)
    nc[6] = case[6].transpose(0, 2).contiguous().transpose(0, 2)
    assert not nc[0].is_contiguous() and not nc[6].is_contiguous()
    assert_same(_ops.trie_beam_sample(*nc, 0.8, 8), want)


def test_scores_are_the_beam_steps_and_the_order_is_the_gumbel_key_order():
    case = make_case(6, 5, 60, seed=3)
    T = 0.7
    scores, parents, tokens, nodes = _ops.trie_beam_sample(*case, T, 12)
    logits, beam_scores, beam_nodes, _, co, ct, u = case
    # The same candidates as the beam step (all of them: 12 >= every request's candidate count here or not).
    step = _ops.trie_beam_step(*case[:6], 5 * 60)
    for b in range(6):
        valid = parents[b] >= 0
        by_pair = {(int(p), int(t)): float(s) for s, p, t in zip(*[x[b] for x in step[:3]]) if p >= 0}
        keys = []
        for j in valid.nonzero().flatten().tolist():
            w, t = int(parents[b, j]), int(tokens[b, j])
            assert by_pair[(w, t)] == float(scores[b, j])       # the beam step's float32 score
            node = int(beam_nodes[b, w])
            rank = ct[co[node]:co[node + 1]].tolist().index(t)
            keys.append(float(scores[b, j]) / T - torch.log(-torch.log(u[b, w, rank])).item())
        assert keys == sorted(keys, reverse=True)               # draw order = decreasing key
        # ... and the drawn are the candidates with the highest keys (here: all of them when fewer than 12).
        every = sorted((float(step[0][b, j]) / T - torch.log(-torch.log(
            u[b, int(step[1][b, j]), ct[co[int(beam_nodes[b, int(step[1][b, j])])]:].tolist().index(
                int(step[2][b, j]))])).item() for j in range(step[1].shape[1]) if step[1][b, j] >= 0), reverse=True)
        assert keys == every[:len(keys)] and len(keys) == min(12, len(every))


@pytest.mark.parametrize("device", DEVICES)
def test_zero_probability_candidates_are_never_drawn(device):
    for seed in range(5):
        case = make_case(5, 4, 30, seed)
        forbidden = torch.arange(30) % 2 == seed % 2
        case[0] = case[0].masked_fill(forbidden, float("-inf"))
        for fill in (None, 0.0, 1.0 - 1e-12):  # u = 0 ranks a candidate last, u -> 1 first
            if fill is not None:
                case[6] = torch.full_like(case[6], fill)
            out = on_device(_ops.trie_beam_sample, device)(*case, 1.0, 30)
            assert_same(out, reference.trie_beam_sample(*case, 1.0, 30))
            valid = out[1] >= 0
            assert valid.any() and not forbidden[out[2][valid]].any()


@pytest.mark.parametrize("device", DEVICES)
def test_an_overflowing_temperature_ranks_by_the_scaled_score_whatever_u_is(device):
    # With T = 1e-320 every finite negative score / T is -inf and every positive one +inf; u = 1 (Gumbel +inf) or
    # u = 0 (-inf) would then make the key NaN, which executors order differently. The scaled score is the key.
    trie = ItemTrie([[3, 5], [3, 6], [3, 7], [4, 8]])
    node_3 = trie.node_of([3])
    logits = torch.tensor([[[0.0] * 5 + [2.0, 1.0, 0.5, 0.0]]])
    nodes, live = torch.tensor([[node_3]]), torch.ones(1, 1, dtype=torch.bool)
    for beam_score, u_row, want in ((-1.0, [1.0, 0.5, 1.0], [5, 6, 7]),   # all -inf: ties, token order
                                    (50.0, [0.0, 1.0, 0.0], [5, 6, 7])):   # all +inf: ties, token order
        u = torch.tensor([[u_row]], dtype=torch.float64)
        outs = [op(logits, torch.tensor([[beam_score]]), nodes, live, trie.child_offsets, trie.child_tokens, u,
                   1e-320, 3) for op in (on_device(_ops.trie_beam_sample, device), reference.trie_beam_sample)]
        assert_same(*outs)
        assert outs[0][2].tolist() == [want]
    # Mixed: scores 0.12 (+inf), -0.88 and -1.38 (-inf); u = 0 for the first and 1 for the others (NaN before).
    u = torch.tensor([[[0.0, 1.0, 1.0]]], dtype=torch.float64)
    outs = [op(logits, torch.tensor([[1.0]]), nodes, live, trie.child_offsets, trie.child_tokens, u, 1e-320, 3)
            for op in (on_device(_ops.trie_beam_sample, device), reference.trie_beam_sample)]
    assert_same(*outs)
    assert outs[0][2].tolist() == [[5, 6, 7]] and outs[0][0][0, 0] > 0 > outs[0][0][0, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_missing_candidates_are_marked_invalid_not_invented(device):
    trie = ItemTrie([[3, 5], [3, 6], [4, 7]])
    logits = torch.randn(2, 2, 9)
    nodes = torch.tensor([[trie.node_of([3]), trie.node_of([4])], [trie.node_of([3]), 0]])
    live = torch.tensor([[True, True], [True, False]])
    u = torch.rand(2, 2, trie.max_children, dtype=torch.float64)
    for op in (on_device(_ops.trie_beam_sample, device), reference.trie_beam_sample):
        s, p, t, n = op(logits, torch.zeros(2, 2), nodes, live, trie.child_offsets, trie.child_tokens, u, 1.0, 5)
        assert (p[0] >= 0).sum() == 3 and (p[1] >= 0).sum() == 2
        assert sorted(t[0, :3].tolist()) == [5, 6, 7] and sorted(t[1, :2].tolist()) == [5, 6]
        assert p[0, 3:].tolist() == [-1, -1] and n[1, 2:].tolist() == [-1] * 3
        assert torch.isinf(s[0, 3:]).all() and (s[0, 3:] < 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_ties_of_keys_go_to_the_lower_beam_then_the_lower_token(device):
    trie = ItemTrie([[3, 5], [4, 6], [4, 7], [5, 8]])
    node_3, node_4 = trie.node_of([3]), trie.node_of([4])
    logits = torch.zeros(1, 3, 10)                       # equal scores and equal uniforms: every key ties
    nodes = torch.tensor([[node_4, node_3, node_4]])
    u = torch.full((1, 3, trie.max_children), 0.5, dtype=torch.float64)
    for op in (on_device(_ops.trie_beam_sample, device), reference.trie_beam_sample):
        _, parents, tokens, _ = op(logits, torch.zeros(1, 3), nodes, torch.ones(1, 3, dtype=torch.bool),
                                   trie.child_offsets, trie.child_tokens, u, 1.0, 5)
        assert parents.tolist() == [[0, 0, 1, 2, 2]] and tokens.tolist() == [[6, 7, 5, 6, 7]]


def test_bad_arguments_raise():
    case = make_case(2, 3, 20, seed=0)

    def fails(index, value, match, T=1.0):
        bad = list(case)
        if index is not None:
            bad[index] = value
        with pytest.raises(RuntimeError, match=match):
            _ops.trie_beam_sample(*bad, T, 4)

    fails(None, None, "temperature must be a finite number > 0", T=0.0)
    fails(None, None, "temperature must be a finite number > 0", T=float("inf"))
    fails(6, case[6].float(), "uniforms must have dtype")
    fails(6, case[6][:, :2], "uniforms must be \\[B, W, C\\]")
    fails(6, case[6][:, :, :1], "is smaller than the")
    fails(6, -case[6], "uniforms must lie in \\[0, 1\\]")
    fails(2, torch.full_like(case[2], 10 ** 6), "is not a trie node")


def test_dead_beams_nodes_are_never_read():
    case = make_case(2, 3, 20, seed=0)
    case[3] = torch.tensor([[True, False, True], [False, True, False]])
    off_trie = list(case)
    off_trie[2] = torch.where(case[3], case[2], torch.tensor([[-5, 10 ** 6, -1]]))
    want = reference.trie_beam_sample(*case, 1.0, 4)
    for op in (_ops.trie_beam_sample, reference.trie_beam_sample):
        assert_same(op(*off_trie, 1.0, 4), want)


def test_opcheck():
    op = torch.ops.atspeed_ext.trie_beam_sample.default
    for B, W, V, k, seed in [(3, 4, 40, 6, 0), (1, 1, 9, 1, 1), (2, 7, 33, 20, 2)]:
        torch.library.opcheck(op, (*make_case(B, W, V, seed), 0.9, k))


@requires_cuda
@pytest.mark.parametrize("B, W, V, num_out", SHAPES + [(8, 40, 1000, 40), (3, 20, 4000, 20)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(B, W, V, num_out, dtype):
    for seed in range(3):
        case = make_case(B, W, V, seed, dtype=dtype, codes=max(5, V // 8), num_items=max(60, V))
        got = _ops.trie_beam_sample(*[x.cuda() for x in case], 1.3, num_out)
        assert_same([x.cpu() for x in got], _ops.trie_beam_sample(*case, 1.3, num_out))
