"""The alignment objectives against hand-computed values, their gradient direction, and masking."""

import math

import pytest
import torch

from atspeed_ext.align.losses import (OBJECTIVES, alignment_loss, forward_kl, token_nll, topk_reverse_kl,
                                      total_variation)

L = torch.log


def test_forward_kl_by_hand():
    q = L(torch.tensor([[0.5, 0.25, 0.25]]))   # over the allowed first two: 2/3, 1/3
    p = L(torch.tensor([[0.1, 0.3, 0.6]]))     # over the allowed first two: 1/4, 3/4
    allowed = torch.tensor([[True, True, False]])
    want = 0.25 * math.log(0.25 / (2 / 3)) + 0.75 * math.log(0.75 / (1 / 3))
    assert forward_kl(q, p, allowed).item() == pytest.approx(want, rel=1e-6)


def test_total_variation_by_hand_and_with_temperature():
    q = L(torch.tensor([[0.5, 0.25, 0.25]]))
    p = L(torch.tensor([[0.1, 0.3, 0.6]]))
    allowed = torch.tensor([[True, True, False]])
    assert total_variation(q, p, allowed).item() == pytest.approx(0.5 * (2 * (2 / 3 - 0.25)), rel=1e-6)
    # temperature 2: distributions proportional to sqrt of the probabilities
    qs = torch.tensor([math.sqrt(0.5), math.sqrt(0.25)])
    ps = torch.tensor([math.sqrt(0.1), math.sqrt(0.3)])
    want = 0.5 * (qs / qs.sum() - ps / ps.sum()).abs().sum().item()
    assert total_variation(q, p, allowed, temperature=2.0).item() == pytest.approx(want, rel=1e-6)


def test_atspeed_s_by_hand():
    q = L(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    p = L(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    allowed = torch.ones(1, 4, dtype=torch.bool)
    qs, ps = [4 / 7, 3 / 7], [1 / 3, 2 / 3]    # both renormalised on S = the draft's top-2 = slots 0, 1
    kl = sum(a * math.log(a / b) for a, b in zip(qs, ps))
    entropy = -sum(a * math.log(a) for a in qs)
    want = kl + ps[1] * entropy                   # p~ of the 2nd (k-th) token of S times H(q~)
    assert topk_reverse_kl(q, p, allowed, k=2).item() == pytest.approx(want, rel=1e-6)
    # S only holds allowed slots: with slot 1 masked, S = {0, 2}
    allowed[0, 1] = False
    qs, ps = [4 / 6, 2 / 6], [1 / 4, 3 / 4]
    want = sum(a * math.log(a / b) for a, b in zip(qs, ps)) - ps[1] * sum(a * math.log(a) for a in qs)
    assert topk_reverse_kl(q, p, allowed, k=2).item() == pytest.approx(want, rel=1e-6)


def test_token_nll_by_hand():
    q = L(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]))
    assert token_nll(q, torch.tensor([1, 2])).item() == pytest.approx(-(math.log(0.25) + math.log(0.7)) / 2, rel=1e-6)
    assert token_nll(q, torch.tensor([1, -1])).item() == pytest.approx(-math.log(0.25), rel=1e-6)  # -1: skipped


def _batch(seed=0, B=3, M=4, Lv=3, C=6):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(B, M, Lv, C, generator=g).log_softmax(-1)
    allowed = torch.rand(B, M, Lv, C, generator=g) < 0.6
    allowed[0, 1, 2] = False                       # a position that allows nothing
    allowed[..., 0] |= torch.rand(B, M, Lv, generator=g) < 0.5
    slots = torch.where(allowed.any(-1), allowed.float().argmax(-1), torch.full((B, M, Lv), -1))
    logits = torch.randn(B, M, Lv, C, generator=g, dtype=torch.float64).float().requires_grad_(True)
    return logits, p, allowed, slots


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_one_sgd_step_lowers_every_objective_and_no_nan(objective):
    """alpha = 1: the alignment term alone (for ``ce``, the CE); teacher values are -inf outside the trie, as
    stored teacher data is."""
    logits, p, allowed, slots = _batch()
    p = p.masked_fill(~allowed, float("-inf"))
    loss = alignment_loss(objective, logits.log_softmax(-1), p, allowed, slots, alpha=1.0, topk=3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    with torch.no_grad():
        stepped = (logits - 0.5 * logits.grad).log_softmax(-1)
        after = alignment_loss(objective, stepped, p, allowed, slots, alpha=1.0, topk=3)
    assert after < loss


@pytest.mark.parametrize("fn", [forward_kl, total_variation, lambda q, p, a: topk_reverse_kl(q, p, a, k=2)])
def test_masked_slots_get_no_mass_and_empty_rows_count_zero(fn):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 5, generator=g).requires_grad_(True)
    p = torch.randn(3, 5, generator=g).log_softmax(-1)
    allowed = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [0, 1, 1, 0, 1]], dtype=torch.bool)
    loss = fn(q, p, allowed)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(q.grad).all()
    assert (q.grad[~allowed] == 0).all()           # disallowed slots never matter
    # the empty row is left out of the mean: the loss equals the mean over the two other rows
    both = fn(q.detach()[[0, 2]], p[[0, 2]], allowed[[0, 2]])
    assert loss.item() == pytest.approx(both.item(), rel=1e-6)
    # changing disallowed values (even to -inf) changes nothing
    q2 = q.detach().masked_fill(~allowed, float("-inf"))
    assert fn(q2, p, allowed).item() == pytest.approx(loss.item(), rel=1e-6)
    # no row allowed at all: 0, not NaN
    assert fn(q.detach(), p, torch.zeros_like(allowed)).item() == 0.0


def test_alignment_loss_mixes_ce_and_align():
    logits, p, allowed, slots = _batch(seed=3)
    q = logits.detach().log_softmax(-1)
    C = q.shape[-1]
    ce = token_nll(q[:, 0].reshape(-1, C), slots[:, 0].reshape(-1))
    assert alignment_loss("ce", q, p, allowed, slots, alpha=0.9) == ce
    tvd_truth = total_variation(q[:, 0].reshape(-1, C), p[:, 0].reshape(-1, C), allowed[:, 0].reshape(-1, C))
    got = alignment_loss("tvdkd", q, p, allowed, slots, alpha=0.7)
    assert got.item() == pytest.approx((0.3 * ce + 0.7 * tvd_truth).item(), rel=1e-6)
    tvd_beams = total_variation(q[:, 1:].reshape(-1, C), p[:, 1:].reshape(-1, C), allowed[:, 1:].reshape(-1, C))
    got = alignment_loss("atspeed-r", q, p, allowed, slots, alpha=0.7)
    assert got.item() == pytest.approx((0.3 * ce + 0.7 * tvd_beams).item(), rel=1e-6)
    beams = lambda x: x[:, 1:].reshape(-1, C)  # noqa: E731
    truth = lambda x: x[:, 0].reshape(-1, C)   # noqa: E731
    want = {"wordkd": forward_kl(truth(q), truth(p), truth(allowed)),
            "seqkd": token_nll(beams(q), slots[:, 1:].reshape(-1)),
            "atspeed-s": topk_reverse_kl(beams(q), beams(p), beams(allowed), k=3)}
    for objective, align in want.items():  # each objective reads the chains it should (truth or beams)
        got = alignment_loss(objective, q, p, allowed, slots, alpha=0.7, topk=3)
        assert got.item() == pytest.approx((0.3 * ce + 0.7 * align).item(), rel=1e-6), objective
    with pytest.raises(ValueError, match="objective must be one of"):
        alignment_loss("kl", q, p, allowed, slots)
    with pytest.raises(ValueError, match="alpha"):
        alignment_loss("wordkd", q, p, allowed, slots, alpha=1.5)
