"""relaxed_verify / exact_verify: CPU (and CUDA) kernels against the reference on random sampled drafts,
hand-built cases with known outcomes, zero-probability candidates, edge cases, errors, opcheck."""

from functools import partial

import pytest
import torch

from atspeed_ext import ItemTrie, _ops, reference
from conftest import DEVICES, on_device, random_identifiers, requires_cuda

OPS = {"relaxed": (_ops.relaxed_verify, reference.relaxed_verify),
       "exact": (_ops.exact_verify, reference.exact_verify)}


def make_case(B, K, N, G, V, seed, policy="anchored", agree=0.5, T=1.0, dtype=torch.float32, depth_codes=5,
              draft_is_target=False):
    """K beams at random depth-1 nodes (some dead), G levels sampled by a draft (= target + noise, or the target
    itself) with the given policy, target logits rows (K beam rows, then N per level), the draft's parent logits
    and scores, uniforms."""
    g = torch.Generator().manual_seed(seed)
    trie = ItemTrie(random_identifiers(300, G + 2, depth_codes, seed=seed) % V)
    co, ct = trie.child_offsets, trie.child_tokens
    R = K + G * N
    target = torch.randn(B, R, V, generator=g) * 2
    noise = torch.randn(B, R, V, generator=g) * torch.where(torch.rand(B, 1, 1, generator=g) < agree, 0.05, 2.0)
    draft = target.clone() if draft_is_target else target + noise
    level1 = torch.arange(int(trie.level_offsets[1]), int(trie.level_offsets[2]))
    # K distinct depth-1 nodes; where the trie has fewer, the remaining beams are dead.
    n = min(K, len(level1))
    beam_nodes = torch.zeros(B, K, dtype=torch.long)
    beam_nodes[:, :n] = torch.stack([level1[torch.randperm(len(level1), generator=g)[:K]] for _ in range(B)])
    beam_live = torch.rand(B, K, generator=g) < 0.8
    beam_live[:, 0] = True
    beam_live[:, n:] = False
    beam_nodes = torch.where(beam_live, beam_nodes, 0)
    beam_scores = torch.where(beam_live, -torch.rand(B, K, generator=g) * 3, float("-inf"))
    beam_rows = torch.arange(K).expand(B, K).contiguous()
    W = K if policy == "anchored" else N
    lp = torch.full((B, G, N), -1, dtype=torch.long)
    lt, lr = lp.clone(), lp.clone()
    d_logits = torch.zeros(B, G, W, V)
    d_scores = torch.full((B, G, W), float("-inf"))
    rows, scores, nodes, live = beam_rows, beam_scores, beam_nodes, beam_live
    for j in range(G):
        width = K if (policy == "anchored" or j == 0) else N
        rows, scores, nodes, live = rows[:, :width], scores[:, :width], nodes[:, :width], live[:, :width]
        parent_logits = draft.gather(1, rows.clamp(min=0).unsqueeze(-1).expand(-1, -1, V))
        d_logits[:, j, :width], d_scores[:, j, :width] = parent_logits, scores
        u = torch.rand(B, width, trie.max_children, generator=g, dtype=torch.float64)
        step = _ops.trie_beam_sample(parent_logits, scores.contiguous(), nodes.contiguous(), live.contiguous(), co, ct,
                                     u, T, N)
        lp[:, j], lt[:, j] = step[1], step[2]
        lr[:, j] = torch.where(step[1] >= 0, K + j * N + torch.arange(N), -1)
        rows, scores, nodes, live = lr[:, j], step[0], step[3], step[1] >= 0
    num_levels = torch.randint(0, G + 1, (B,), generator=g)
    uniforms = torch.rand(B, G + 1, 2 * N + K, generator=g, dtype=torch.float64)
    return [target.to(dtype), beam_rows, beam_scores, beam_nodes, beam_live, lp, lt, lr, num_levels,
            d_logits.to(dtype), d_scores, uniforms, co, ct, T]


def assert_same(got, want):
    assert torch.equal(got[0], want[0])
    for i in (2, 3, 4):
        assert torch.equal(got[i], want[i])
    assert torch.equal(got[1], want[1])  # the same float32 scores, bit for bit


def check_invariants(case, out):
    """Valid slots come first, are distinct trie children of their parents and never NaN."""
    accepted, scores, parents, tokens, nodes = out
    co, ct = case[12], case[13]
    for b in range(scores.shape[0]):
        valid = parents[b] >= 0
        n = int(valid.sum())
        assert valid[:n].all() and not valid[n:].any()
        assert not torch.isnan(scores[b]).any()
        assert torch.isinf(scores[b][~valid]).all() and torch.isfinite(scores[b][valid]).all()
        assert len(set(nodes[b][valid].tolist())) == n
        for k in range(n):
            assert int(ct[int(nodes[b, k]) - 1]) == int(tokens[b, k])
        assert 0 <= int(accepted[b]) <= int(case[8][b])


CASES = [(1, 1, 1, 1), (3, 3, 6, 2), (4, 5, 5, 3), (2, 4, 12, 3), (3, 2, 7, 1), (2, 3, 4, 0)]


@pytest.mark.parametrize("rule", ["relaxed", "exact"])
@pytest.mark.parametrize("B, K, N, G", CASES)
@pytest.mark.parametrize("policy", ["anchored", "beam"])
def test_cpu_matches_reference(rule, B, K, N, G, policy):
    op, ref = OPS[rule]
    for seed in range(3):
        case = make_case(B, K, N, G, V=40, seed=seed, policy=policy, T=[1.0, 0.7, 2.5][seed])
        got = op(*case)
        assert_same(got, ref(*case))
        check_invariants(case, got)


@pytest.mark.parametrize("rule", ["relaxed", "exact"])
def test_dtypes_and_non_contiguous_inputs(rule):
    op, ref = OPS[rule]
    case = make_case(3, 3, 6, 2, V=33, seed=7)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        c = list(case)
        c[0], c[9] = case[0].to(dtype), case[9].to(dtype)
        assert_same(op(*c), ref(*c))
    c = list(case)
    c[0] = case[0].transpose(0, 1).contiguous().transpose(0, 1)
    c[11] = case[11].transpose(1, 2).contiguous().transpose(1, 2)
    assert not c[0].is_contiguous() and not c[11].is_contiguous()
    assert_same(op(*c), ref(*case))


@pytest.mark.parametrize("rule", ["relaxed", "exact"])
@pytest.mark.parametrize("policy", ["anchored", "beam"])
def test_levels_with_fewer_candidates_than_beams(rule, policy):
    # Two codes per trie level and K = 5: levels run out of candidates before K draws (the rules' early stops).
    op, ref = OPS[rule]
    short = 0
    for seed in range(8):
        case = make_case(3, 5, 6, 2, V=40, seed=seed, policy=policy, depth_codes=2)
        want = ref(*case)
        assert_same(op(*case), want)
        short += int((want[2] < 0).any(1).sum())
    assert short >= 8  # most requests end a level with fewer than K beams


def test_a_draft_equal_to_the_target_passes_every_exact_level():
    # q = p at every level (same logits, same scores): each proposal is accepted (u * s < r with s = r up to
    # rounding), so every drafted level's K-set is the anchored one and passes.
    for seed in range(3):
        case = make_case(8, 3, 6, 3, V=40, seed=seed, draft_is_target=True)
        assert torch.equal(_ops.exact_verify(*case)[0], case[8])


@pytest.mark.parametrize("device", DEVICES)
def test_zero_probability_candidates_are_never_selected(device):
    # Forbid (logit -inf) a third of the vocabulary in every target row: no rule may return such a token,
    # whatever the uniforms (the draft still proposes them: its logits are finite).
    for rule in ("relaxed", "exact"):
        op, ref = OPS[rule]
        op = on_device(op, device)
        for seed in range(6):
            case = make_case(6, 3, 8, 2, V=30, seed=seed, policy=["anchored", "beam"][seed % 2])
            forbidden = torch.arange(30) % 3 == seed % 3
            case[0] = case[0].masked_fill(forbidden, float("-inf"))
            for fill in (None, 0.0, 1.0):
                if fill is not None:
                    case[11] = torch.full_like(case[11], fill)
                out = op(*case)
                assert_same(out, ref(*case))
                valid = out[2] >= 0
                assert not forbidden[out[3][valid]].any()
                assert valid.any()


@pytest.mark.parametrize("device", DEVICES)
def test_low_temperatures_do_not_lose_beams(device):
    # At T = 1e-3 every probability but the top one underflows when normalised once; each draw re-normalises
    # over what is left, so a level with >= K candidates still yields K beams (here every node has >= 2 children).
    for rule in ("relaxed", "exact"):
        op, ref = OPS[rule]
        op = on_device(op, device)
        for seed in range(4):
            case = make_case(6, 2, 5, 2, V=40, seed=seed, T=1e-3, policy=["anchored", "beam"][seed % 2])
            out = op(*case)
            assert_same(out, ref(*case))
            assert (out[2] >= 0).all()


def _tiny_tree():
    """Trie a->{c, d}, b->{e, f}; K = 2 beams at the root (one live), target rows: root, a, b."""
    trie = ItemTrie([[3, 5], [3, 6], [4, 7], [4, 8]])
    V = 9
    logits = torch.full((1, 3, V), -20.0)
    logits[0, 0, 3], logits[0, 0, 4] = 1.0, 0.0           # root: a more likely than b
    logits[0, 1, 5], logits[0, 1, 6] = 0.5, 0.0           # a -> c, d
    logits[0, 2, 7], logits[0, 2, 8] = 0.0, 0.2           # b -> e, f
    beams = [torch.tensor([[0, 0]]), torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long),
             torch.tensor([[True, False]])]
    return trie, logits, beams


def _run(rule, trie, logits, beams, parents, tokens, rows, g, draft_rows_logits, draft_scores, uniforms, T=1.0,
         device="cpu"):
    op, ref = OPS[rule]
    op = on_device(op, device)
    args = [logits, *beams, torch.tensor([parents]), torch.tensor([tokens]), torch.tensor([rows]), torch.tensor([g]),
            draft_rows_logits, draft_scores, uniforms, trie.child_offsets, trie.child_tokens, T]
    got = op(*args)
    assert_same(got, ref(*args))
    return [x[0].tolist() for x in got]


@pytest.mark.parametrize("device", DEVICES)
def test_hand_built_exact(device):
    trie, logits, beams = _tiny_tree()
    run = partial(_run, device=device)
    # One drafted level {a, b} (in that order) from the draft's logits = the target's root row.
    d_logits = logits[:, :1].unsqueeze(1).expand(1, 1, 2, 9).clone()       # [B, G=1, W=2, V]
    d_scores = torch.zeros(1, 1, 2)
    K, N = 2, 2
    u = torch.zeros(1, 2, 2 * N + K)
    # q = p and u_acc = 0: a then b accepted = the anchored set -> level 1 passes; the bonus (level 2) is the
    # target's sample from {a-c, a-d, b-e, b-f} with u_fb = 0, 0: the first candidate, then the next one.
    acc, scores, parents, tokens, nodes = run("exact", trie, logits, beams, [[0, 0]], [[3, 4]], [[1, 2]], 1,
                                               d_logits, d_scores, u.double(), device=device)
    assert acc == 1 and tokens == [5, 6] and parents == [0, 0]
    # u_fb = 0.999 at the bonus: the last candidates first (b-f, then b-e).
    u2 = u.clone()
    u2[0, 1, 2 * N:] = 0.999
    acc, _, parents, tokens, _ = run("exact", trie, logits, beams, [[0, 0]], [[3, 4]], [[1, 2]], 1, d_logits, d_scores,
                                      u2.double(), device=device)
    assert acc == 1 and tokens == [8, 7] and parents == [1, 1]
    # A draft that only proposes b (a's probability 0 for the draft: q(a) = 0): with u_acc = 0 the proposal b is
    # accepted at the first draw only if r(b) > 0 (yes); the second draw has no proposal left: a by inverse CDF.
    # {b, a} are both drafted? a is not: the level is the result (accepted = 0).
    d2 = d_logits.clone()
    d2[0, 0, :, 3] = float("-inf")
    acc, _, parents, tokens, _ = run("exact", trie, logits, beams, [[0, -1]], [[4, 0]], [[2, -1]], 1, d2, d_scores,
                                      u.double(), device=device)
    assert acc == 0 and tokens == [4, 3] and parents == [0, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_hand_built_relaxed(device):
    trie, logits, beams = _tiny_tree()
    run = partial(_run, device=device)
    d_logits = logits[:, :1].unsqueeze(1).expand(1, 1, 2, 9).clone()
    d_scores = torch.zeros(1, 1, 2)
    N, K = 2, 2
    # u_acc = 0: both drafted nodes accepted (p > 0); K = 2 of 2 kept, ordered by u_sel (b's is smaller).
    u = torch.zeros(1, 2, 2 * N + K, dtype=torch.float64)
    u[0, 0, N:2 * N] = torch.tensor([0.9, 0.1])
    acc, _, parents, tokens, _ = run("relaxed", trie, logits, beams, [[0, 0]], [[3, 4]], [[1, 2]], 1, d_logits,
                                      d_scores, u, device=device)
    # Kept in u_sel order: b, then a; the bonus (level 2) samples from b's children first (u_fb = 0, 0).
    assert acc == 1 and tokens == [7, 8] and parents == [1, 1]
    # u_acc = 1: accept iff q < p; with q = p nothing is accepted and the residual max(0, p - q) is all zero:
    # the fallback samples p (u_fb = 0, 0: a, then b) and the round stops at level 1.
    u = torch.ones(1, 2, 2 * N + K, dtype=torch.float64)
    u[0, 0, 2 * N:] = 0.0
    acc, _, parents, tokens, _ = run("relaxed", trie, logits, beams, [[0, 0]], [[3, 4]], [[1, 2]], 1, d_logits,
                                      d_scores, u, device=device)
    assert acc == 0 and tokens == [3, 4] and parents == [0, 0]
    # Only a accepted (b's u_acc = 1 with q = p); the missing one comes from the residual, all zero, so from p:
    # b; the round stops at level 1.
    u = torch.zeros(1, 2, 2 * N + K, dtype=torch.float64)
    u[0, 0, 1] = 1.0
    u[0, 0, 2 * N:] = 0.999
    acc, _, parents, tokens, _ = run("relaxed", trie, logits, beams, [[0, 0]], [[3, 4]], [[1, 2]], 1, d_logits,
                                      d_scores, u, device=device)
    assert acc == 0 and tokens == [3, 4]


@pytest.mark.parametrize("device", DEVICES)
def test_all_masked_rows_give_invalid_beams_without_nan(device):
    for rule in ("relaxed", "exact"):
        op, ref = OPS[rule]
        op = on_device(op, device)
        case = make_case(3, 3, 5, 2, V=30, seed=3)
        case[0] = torch.full_like(case[0], float("-inf"))        # every target logit -inf: no candidate
        out = op(*case)
        assert_same(out, ref(*case))
        assert (out[2] == -1).all() and torch.isinf(out[1]).all() and (out[0] == 0).all()
        case = make_case(3, 3, 5, 2, V=30, seed=3)
        case[4] = torch.zeros_like(case[4])                      # every beam dead
        case[8] = torch.zeros_like(case[8])
        out = op(*case)
        assert (out[2] == -1).all() and not torch.isnan(out[1]).any()


def test_bad_arguments_raise():
    case = make_case(2, 3, 4, 2, V=20, seed=0)
    for rule in ("relaxed", "exact"):
        op = OPS[rule][0]

        def fails(index, value, match):
            bad = list(case)
            bad[index] = value
            with pytest.raises(RuntimeError, match=match):
                op(*bad)

        fails(14, 0.0, "temperature must be a finite number > 0")
        fails(14, float("nan"), "temperature must be a finite number > 0")
        fails(11, case[11][:, :, 1:], "uniforms must be \\[B, G \\+ 1, 2N \\+ K\\]")
        fails(11, case[11].float(), "uniforms must have dtype")
        fails(11, case[11] + 1.5, "uniforms must lie in \\[0, 1\\]")
        fails(9, case[9][:, :, :2], "draft_logits.size\\(2\\)")
        fails(9, case[9].double(), "draft_logits must have the dtype of logits")
        fails(10, case[10][:, :1], "draft_scores must be \\[B, G, W\\]")
        fails(8, torch.tensor([3, 0]), "num_levels\\[0\\] = 3 must be in \\[0, 2\\]")
        bad_tokens = case[6].clone()
        bad_tokens[0, 0, 0] = 0                                   # token 0 is no trie child (codes start at 3)
        full = list(case)
        full[8] = torch.tensor([2, 2])
        full[6] = bad_tokens
        with pytest.raises(RuntimeError, match="is not a trie child of its parent"):
            op(*full)


@pytest.mark.parametrize("rule", ["relaxed", "exact"])
def test_opcheck(rule):
    op = getattr(torch.ops.atspeed_ext, f"{rule}_verify").default
    torch.library.opcheck(op, make_case(3, 3, 6, 2, V=30, seed=1))
    torch.library.opcheck(op, make_case(2, 2, 5, 2, V=25, seed=2, policy="beam", T=0.5))


@requires_cuda
@pytest.mark.parametrize("rule", ["relaxed", "exact"])
@pytest.mark.parametrize("B, K, N, G, policy", [(1, 1, 1, 1, "anchored"), (4, 5, 5, 3, "beam"),
                                                (2, 4, 40, 3, "anchored"), (3, 20, 40, 3, "beam")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(rule, B, K, N, G, policy, dtype):
    op = OPS[rule][0]
    for seed in range(3):
        case = make_case(B, K, N, G, V=300, seed=seed, policy=policy, dtype=dtype, depth_codes=12)
        got = op(*[x.cuda() if isinstance(x, torch.Tensor) else x for x in case])
        assert_same([x.cpu() for x in got], op(*case))
