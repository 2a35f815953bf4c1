"""strict_verify: CPU and CUDA kernels against the reference on random and hand-built trees; errors; opcheck."""

import pytest
import torch

from atspeed_ext import ItemTrie, _ops, reference
from conftest import DEVICES, on_device, random_identifiers, requires_cuda


def make_case(B, K, N, G, V, seed, agree=0.7, dtype=torch.float32, codes=6, at_root=None):
    """G drafted levels (draft = noisy target, so some levels pass) from K current beams, and the target logits
    rows: the K beam rows (permuted), then N rows per level. The beams sit at the root (beam 0 live only, the
    first round) or, when ``at_root`` is False (default: every other seed), on random depth-1 nodes with
    random negative scores and random liveness (beam 0 dead in some requests). ``codes`` per trie level:
    2 leaves levels with fewer than K candidates."""
    g = torch.Generator().manual_seed(seed)
    trie = ItemTrie(random_identifiers(400, G + 2, codes, seed=seed) % V)
    co, ct = trie.child_offsets, trie.child_tokens
    R = K + G * N
    target = torch.randn(B, R, V, generator=g) * 3
    noise = torch.randn(B, R, V, generator=g) * torch.where(torch.rand(B, 1, 1, generator=g) < agree, 0.01, 3.0)
    draft = target + noise
    beam_rows = torch.stack([torch.randperm(K, generator=g) for _ in range(B)])
    if at_root if at_root is not None else seed % 2 == 0:
        beam_scores = torch.zeros(B, K)
        beam_nodes = torch.zeros(B, K, dtype=torch.long)
        beam_live = torch.zeros(B, K, dtype=torch.bool)
        beam_live[:, 0] = True
    else:
        first, count = int(trie.level_offsets[1]), int(trie.level_offsets[2] - trie.level_offsets[1])
        beam_nodes = first + torch.stack([torch.randperm(max(K, count), generator=g)[:K] % count for _ in range(B)])
        beam_scores = -torch.rand(B, K, generator=g) * 4
        beam_live = torch.rand(B, K, generator=g) < 0.8
        beam_live[torch.arange(B), torch.randint(0, K, (B,), generator=g)] = True  # at least one live beam
    lp = torch.full((B, G, N), -1, dtype=torch.long)
    lt, lr = lp.clone(), lp.clone()
    rows, scores, nodes, live = beam_rows, beam_scores, beam_nodes, beam_live
    for j in range(G):
        step = reference.trie_beam_step(draft.gather(1, rows.clamp(min=0).unsqueeze(-1).expand(-1, -1, V)),
                                        scores, nodes, live, co, ct, N)
        lp[:, j], lt[:, j] = step[1], step[2]
        lr[:, j] = torch.where(step[1] >= 0, K + j * N + torch.arange(N), -1)
        rows, scores, nodes, live = lr[:, j], step[0], step[3], step[1] >= 0
    num_levels = torch.randint(0, G + 1, (B,), generator=g)
    return (target.to(dtype), beam_rows, beam_scores, beam_nodes, beam_live, lp, lt, lr, num_levels, co, ct)


def assert_same(got, want):
    for g, w in zip(got, want):
        assert torch.equal(g, w)  # indices exactly, float32 scores bit for bit


@pytest.mark.parametrize("B, K, N, G", [(1, 1, 1, 1), (3, 3, 6, 2), (4, 5, 5, 3), (2, 4, 40, 3), (3, 2, 7, 1)])
@pytest.mark.parametrize("seed", range(4))
def test_cpu_matches_reference(B, K, N, G, seed):
    case = make_case(B, K, N, G, V=40, seed=seed)
    assert_same(_ops.strict_verify(*case), reference.strict_verify(*case))


@pytest.mark.parametrize("codes", [2, 3])
def test_levels_with_fewer_candidates_than_beams(codes):
    for seed in range(6):
        case = make_case(3, 5, 6, 2, V=40, seed=seed, codes=codes)
        assert_same(_ops.strict_verify(*case), reference.strict_verify(*case))


def test_rejections_at_every_level_and_short_levels():
    # Kernel = reference over cases that reach a rejection at every level, full acceptance and short levels.
    outcomes, short = set(), 0
    for seed in range(12):
        for codes in (6, 2):
            case = make_case(4, 3, 4, 3, V=40, seed=seed, codes=codes, agree=0.5)
            want = reference.strict_verify(*case)
            assert_same(_ops.strict_verify(*case), want)
            outcomes |= {(int(a), int(n)) for a, n in zip(want[0], case[8])}
            short += int(torch.isinf(want[1]).any(1).sum())
    assert {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (3, 3)} <= outcomes and short >= 4


def test_levels_are_accepted_when_draft_and_target_agree():
    case = make_case(6, 3, 3, 3, V=40, seed=5, agree=1.0)  # draft = target + 1e-2 noise, N = K
    accepted = _ops.strict_verify(*case)[0]
    assert torch.equal(accepted, case[8])                 # every drafted level passes


def test_dtypes_and_non_contiguous_logits():
    case = list(make_case(3, 4, 8, 2, V=33, seed=7))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        c = list(case)
        c[0] = case[0].to(dtype)
        assert_same(_ops.strict_verify(*c), reference.strict_verify(*c))
    c = list(case)
    c[0] = case[0].transpose(0, 1).contiguous().transpose(0, 1)
    assert not c[0].is_contiguous()
    assert_same(_ops.strict_verify(*c), reference.strict_verify(*case))


@pytest.mark.parametrize("device", DEVICES)
def test_hand_built_tree(device):
    # Trie: a->{c, d}, b->{e}; K = 2 beams at the root; target prefers a then b at level 1, then a-c, a-d.
    trie = ItemTrie([[3, 5], [3, 6], [4, 7]])
    co, ct = trie.child_offsets, trie.child_tokens
    V = 8
    logits = torch.full((1, 4, V), -10.0)
    logits[0, 0, 3], logits[0, 0, 4] = 2.0, 1.0           # row 0: root
    logits[0, 1, 5], logits[0, 1, 6] = 1.0, 0.5           # row 1: a
    logits[0, 2, 7] = -1.0                                 # row 2: b
    beam = dict(beam_rows=torch.tensor([[0, 0]]), beam_scores=torch.zeros(1, 2),
                beam_nodes=torch.zeros(1, 2, dtype=torch.long), beam_live=torch.tensor([[True, False]]))

    def run(parents, tokens, rows, g):
        args = (logits, beam["beam_rows"], beam["beam_scores"], beam["beam_nodes"], beam["beam_live"],
                torch.tensor([parents]), torch.tensor([tokens]), torch.tensor([rows]), torch.tensor([g]), co, ct)
        got, want = on_device(_ops.strict_verify, device)(*args), reference.strict_verify(*args)
        assert_same(got, want)
        return got

    # Level 1 drafted {a, b}: accepted; level 2 drafted {a-c, b-e}: the target's {a-c, a-d} is not inside.
    acc, scores, parents, tokens, _ = run([[0, 0], [0, 1]], [[3, 4], [5, 7]], [[1, 2], [3, 3]], 2)
    assert acc.tolist() == [1] and tokens.tolist() == [[5, 6]] and parents.tolist() == [[0, 0]]
    # Level 1 drafted {a, x}: b is missing, nothing accepted; the result is the target's level 1 (bonus).
    acc, _, parents, tokens, _ = run([[0, -1]], [[3, 0]], [[1, -1]], 1)
    assert acc.tolist() == [0] and tokens.tolist() == [[3, 4]] and parents.tolist() == [[0, 0]]
    # No drafted level: the bonus alone.
    acc, _, _, tokens, _ = run([[-1, -1]], [[0, 0]], [[-1, -1]], 0)
    assert acc.tolist() == [0] and tokens.tolist() == [[3, 4]]
    # Everything drafted (in another order): both levels pass and the bonus is level 3 (no children: invalid).
    acc, scores, _, tokens, _ = run([[0, 0], [1, 1]], [[4, 3], [5, 6]], [[2, 1], [3, 3]], 2)
    assert acc.tolist() == [2] and tokens.tolist() == [[-1, -1]] and torch.isinf(scores).all()


def test_bad_arguments_raise():
    case = list(make_case(2, 3, 4, 2, V=20, seed=0))
    bad = list(case)
    bad[8] = torch.tensor([3, 0])
    with pytest.raises(RuntimeError, match="num_levels\\[0\\] = 3 must be in \\[0, 2\\]"):
        _ops.strict_verify(*bad)
    bad = list(case)
    bad[1] = torch.full_like(case[1], 99)
    with pytest.raises(RuntimeError, match="is not a logits row"):
        _ops.strict_verify(*bad)
    bad = list(case)
    bad[3] = torch.tensor([[0, 0, 0], [10 ** 6, 0, 0]])  # beam 0 is live
    with pytest.raises(RuntimeError, match=r"beam_nodes\[1, 0\] = 1000000 is not a trie node in \[0, "):
        _ops.strict_verify(*bad)
    with pytest.raises(RuntimeError, match="= 1000000 is not a trie node"):
        reference.strict_verify(*bad)
    bad[3] = torch.tensor([[0, 0, 0], [0, -1, 10 ** 6]])  # dead beams' nodes are never read
    assert_same(_ops.strict_verify(*bad), reference.strict_verify(*case))
    bad = list(case)
    bad[2] = case[2].double()
    with pytest.raises(RuntimeError, match="beam_scores must have dtype"):
        _ops.strict_verify(*bad)
    bad = list(case)
    bad[6] = case[6][:, :1]
    with pytest.raises(RuntimeError, match="must have the shape of level_parent"):
        _ops.strict_verify(*bad)


def test_opcheck():
    torch.library.opcheck(torch.ops.atspeed_ext.strict_verify.default, make_case(3, 3, 6, 2, V=30, seed=1))


@requires_cuda
# K 441-512: the kernel's shared memory holds no score cache at all (the recomputing path).
@pytest.mark.parametrize("B, K, N, G", [(1, 1, 1, 1), (4, 5, 5, 3), (2, 4, 40, 3), (3, 20, 40, 3), (2, 450, 450, 2),
                                        (1, 512, 512, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(B, K, N, G, dtype):
    for seed in range(3):
        case = make_case(B, K, N, G, V=300, seed=seed, dtype=dtype)
        got = _ops.strict_verify(*[x.cuda() for x in case])
        assert_same([x.cpu() for x in got], _ops.strict_verify(*case))


def test_dead_beams_rows_are_never_read():
    """A dead beam's logits row may be anything (here out of range): neither twin reads it (the reference used to
    gather it and raise an IndexError)."""
    trie = ItemTrie([[3, 5], [3, 6], [4, 7]])
    logits = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(0))
    args = (logits, torch.tensor([[0, 10 ** 9]]), torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long),
            torch.tensor([[True, False]]), torch.tensor([[[0, 0]]]), torch.tensor([[[3, 4]]]),
            torch.tensor([[[1, 2]]]), torch.tensor([1]), trie.child_offsets, trie.child_tokens)
    got, want = _ops.strict_verify(*args), reference.strict_verify(*args)
    assert_same(got, want)
    assert got[0].tolist() == [1]


def test_rows_of_levels_a_request_did_not_draft_are_never_read():
    """Slots of levels at or beyond num_levels[b] may hold anything (here an out-of-range row): both twins ignore
    them, as the sampling verifications do (the CPU kernel used to refuse them)."""
    trie = ItemTrie([[3, 5, 7], [3, 6, 7], [4, 5, 8]])
    logits = torch.randn(1, 8, 10, generator=torch.Generator().manual_seed(0))
    args = (logits, torch.tensor([[0, 1]]), torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long),
            torch.tensor([[True, False]]), torch.tensor([[[0, 0, -1], [0, 1, -1]]]),
            torch.tensor([[[3, 4, -1], [5, 5, -1]]]), torch.tensor([[[2, 3, -1], [4, 10 ** 9, -1]]]),
            torch.tensor([1]), trie.child_offsets, trie.child_tokens)
    assert_same(_ops.strict_verify(*args), reference.strict_verify(*args))
