"""Statistical tests of beam sampling: the exact distribution of the final K-set of target-only beam sampling,
enumerated on tiny tries and tiny random models, against >= 100,000 samples of BeamSearchDecoder(do_sample=True)
(must match), SpecBeamDecoder(verification="exact") (must match, whatever the draft) and
SpecBeamDecoder(verification="relaxed") with N > K (must deviate). Fixed seeds: the outcomes are deterministic;
the thresholds' false-alarm rates (for a correct sampler and a fresh seed) are stated where they are used.

Samples are batched: one generate call decodes many copies of one prompt (every row draws its own uniforms)."""

import math
from collections import Counter, defaultdict
from functools import lru_cache

import pytest
import torch

from atspeed_ext import BeamSearchDecoder, ItemTrie, SpecBeamDecoder, _ops

PROMPT = [1, 4, 2]
CHUNK = 50_000          # rows per generate call
Z_1E6 = 4.753424        # upper 1e-6 quantile of the standard normal


def tiny_lm(family: str, vocab_size: int, seed: int, spread: float = 2.5):
    """A random 1-layer causal LM, hidden 16, float64; ``spread`` scales the logits (softer than conftest's)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, bos_token_id=None,
                  eos_token_id=None, pad_token_id=None, tie_word_embeddings=False)
    config, cls = (LlamaConfig, LlamaForCausalLM) if family == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    model = cls(config(**common))
    with torch.no_grad():
        model.lm_head.weight.mul_(spread)
    return model.double().eval()


def grid_trie(codes: list[int], num_items: int, seed: int) -> ItemTrie:
    """``num_items`` distinct identifiers on a grid: level l uses its own ``codes[l]`` tokens (after 3 specials)."""
    g = torch.Generator().manual_seed(seed)
    total = math.prod(codes)
    pick = torch.randperm(total, generator=g)[:num_items]
    cols, base, rest = [], 3, pick
    for level, c in enumerate(codes):
        stride = math.prod(codes[level + 1:])
        cols.append(base + (rest // stride) % c)
        base += c
    return ItemTrie(torch.stack(cols, 1))


# ----------------------------------------------------------------------------------------------- exact law
def node_log_probs(model, trie: ItemTrie, prompt: list[int]) -> dict[int, torch.Tensor]:
    """Full-vocabulary log-probabilities after the prompt and each internal trie node's prefix (float64)."""
    out, frontier = {}, [(0, [])]
    with torch.no_grad():
        while frontier:
            node, prefix = frontier.pop()
            if trie.depth == len(prefix):
                continue
            logits = model(input_ids=torch.tensor([prompt + prefix])).logits[0, -1]
            out[node] = torch.log_softmax(logits.double(), -1)
            for token in trie.children(prefix):
                frontier.append((trie.node_of(prefix + [token]), prefix + [token]))
    return out


def set_law(weights: dict, k: int) -> dict:
    """Law of the set of ``k`` draws without replacement, P(draw x) proportional to weights[x] (all if fewer)."""
    law = defaultdict(float)
    items = [x for x, w in weights.items() if w > 0]
    k = min(k, len(items))

    def draw(chosen, left, p):
        if len(chosen) == k:
            law[frozenset(chosen)] += p
            return
        for x in items:
            if x not in chosen:
                draw(chosen + [x], left - weights[x], p * weights[x] / left)

    draw([], sum(weights[x] for x in items), 1.0)
    return law


def beam_sampling_law(trie: ItemTrie, logp: dict, K: int, T: float) -> dict:
    """The exact law of the final K-set (of leaf nodes) of target-only beam sampling, level by level."""
    co, ct = trie.child_offsets.tolist(), trie.child_tokens.tolist()
    score = {0: 0.0}
    law = {frozenset([0]): 1.0}
    for _ in range(trie.depth):
        nxt = defaultdict(float)
        for beams, p in law.items():
            weights = {}
            for node in beams:
                for e in range(co[node], co[node + 1]):
                    score[e + 1] = score[node] + float(logp[node][ct[e]])
                    weights[e + 1] = math.exp(score[e + 1] / T)
            for s, q in set_law(weights, K).items():
                nxt[s] += p * q
        law = nxt
    return dict(law)


# ----------------------------------------------------------------------------------------------- the tests
N_SAMPLES = 100_000


def chi_square(counts: Counter, law: dict, n: int) -> tuple[float, int, float]:
    """Pearson's statistic over the cells with expected count >= 5 plus one pooled cell (the rest, unseen sets
    included), its degrees of freedom and the critical value at a 1e-6 false-alarm rate (Wilson-Hilferty)."""
    big = [s for s, p in law.items() if p * n >= 5]
    rest_p = 1.0 - sum(law[s] for s in big)
    rest_c = n - sum(counts[s] for s in big)
    stat = sum((counts[s] - n * law[s]) ** 2 / (n * law[s]) for s in big)
    cells = len(big)
    if rest_p * n >= 5:
        stat += (rest_c - n * rest_p) ** 2 / (n * rest_p)
        cells += 1
    elif rest_c > 20:  # mass where the law has almost none: a failure on its own
        stat = float("inf")
    df = cells - 1
    h = 2.0 / (9.0 * df)
    return stat, df, df * (1.0 - h + Z_1E6 * math.sqrt(h)) ** 3


def tvd(counts: Counter, law: dict, n: int) -> float:
    keys = set(counts) | set(law)
    return 0.5 * sum(abs(counts[s] / n - law.get(s, 0.0)) for s in keys)


def sample_sets(decoder, n: int) -> tuple[Counter, list]:
    """The final K-sets (of leaf nodes) of n decodes of PROMPT, and the decoders' stats."""
    counts, stats = Counter(), []
    trie = decoder.trie
    for start in range(0, n, CHUNK):
        rows = min(CHUNK, n - start)
        out = decoder.generate(torch.tensor([PROMPT]).expand(rows, len(PROMPT)).contiguous())
        nodes = torch.tensor([[trie.node_of(seq) if ok else -1 for seq, ok in zip(r, v)]
                              for r, v in zip(out.sequences.tolist(), out.valid.tolist())])
        for row in nodes.tolist():
            counts[frozenset(x for x in row if x >= 0)] += 1
        if getattr(out, "stats", None) is not None:
            stats.append(out.stats)
    return counts, stats


@lru_cache(maxsize=None)
def setup(depth: int):
    """(trie, K, T, target, unrelated draft, exact law) of the two test worlds."""
    if depth == 2:  # T < 1 concentrates the law over the 2024 possible sets: a nearly uniform one has no power
        trie, K, T = grid_trie([6, 6], 24, seed=0), 3, 0.5
    else:
        trie, K, T = grid_trie([3, 3, 4], 24, seed=1), 2, 1.0
    V = 3 + sum(int(c) for c in {2: [6, 6], 3: [3, 3, 4]}[depth])
    target = tiny_lm("llama", V, seed=10 + depth)
    draft = tiny_lm("qwen2", V, seed=20 + depth, spread=4.0)
    logp = node_log_probs(target, trie, PROMPT)
    law = beam_sampling_law(trie, logp, K, T)
    assert abs(sum(law.values()) - 1.0) < 1e-9
    assert_has_power(law, beam_sampling_law(trie, logp, K, 1.2 * T))
    return trie, K, T, target, draft, law


def assert_has_power(law: dict, wrong: dict, n: int = None):
    """The world can tell ``law`` from a nearby ``wrong`` law (a sampler 20% too hot) with n samples: the
    expected chi-square excess of the wrong law, n * sum((q - p)^2 / p) over the test's cells, is at least twice
    the margin between the 1e-6 critical value and the degrees of freedom."""
    n = n or N_SAMPLES
    big = [s for s, p in law.items() if p * n >= 5]
    excess = n * sum((wrong.get(s, 0.0) - law[s]) ** 2 / law[s] for s in big)
    rest_p, rest_q = 1.0 - sum(law[s] for s in big), 1.0 - sum(wrong.get(s, 0.0) for s in big)
    if rest_p * n >= 5:
        excess += n * (rest_q - rest_p) ** 2 / rest_p
    _, df, crit = chi_square(Counter({s: round(p * n) for s, p in law.items()}), law, n)
    assert excess > 2 * (crit - df), f"no power: expected excess {excess:.0f} vs margin {crit - df:.0f}"


def assert_matches(counts, law, n=N_SAMPLES):
    stat, df, crit = chi_square(counts, law, n)
    # False alarm (a correct sampler failing) ~1e-6 per assertion (chi-square quantile, Wilson-Hilferty).
    assert stat < crit, f"chi2 = {stat:.1f} > {crit:.1f} (df {df}), TVD {tvd(counts, law, n):.4f}"
    return stat, df


@pytest.mark.parametrize("depth", [2, 3])
def test_target_only_beam_sampling_has_the_exact_law(depth):
    trie, K, T, target, _, law = setup(depth)
    counts, _ = sample_sets(BeamSearchDecoder(target, trie, K, do_sample=True, temperature=T, seed=depth), N_SAMPLES)
    assert_matches(counts, law)


@pytest.mark.parametrize("depth, policy, by_depth", [(2, "anchored", False), (3, "anchored", False),
                                                     (3, "beam", False), (3, "anchored", True), (3, "beam", True)])
def test_exact_verification_has_the_exact_law_with_an_unrelated_draft(depth, policy, by_depth):
    trie, K, T, target, draft, law = setup(depth)
    # N = K + 1 drafted nodes per level: fewer than the candidates, so some target draws are not drafted. By depth,
    # (K, K + 1): 2 of the 3 first codes at depth 1, 3 nodes at depth 2. (Rows of a batch drafting one level at
    # different depths need a deeper trie: the next test.)
    dec = SpecBeamDecoder(target, draft, trie, K, (K, K + 1) if by_depth else K + 1, gamma=2, verification="exact",
                          draft_policy=policy, temperature=T, seed=8 if by_depth else 7)
    counts, stats = sample_sets(dec, N_SAMPLES)
    assert_matches(counts, law)
    # The draft is unrelated, so some levels fail (the residual paths run) and some pass (speculation helps).
    accepted = Counter(n for s in stats for r in s.accepted_levels for n in r)
    assert accepted[0] > 1000 and sum(v for k, v in accepted.items() if k >= 1) > 1000


@pytest.mark.parametrize("policy", ["anchored", "beam"])
def test_exact_law_when_rows_of_a_batch_draft_one_level_at_different_widths(policy):
    """Depth 4, gamma 1, widths (2, 4, 2): a batch's rows reach depth 1 or 2 after round one, so round two drafts
    one level at depth 2 (4 nodes) for some rows and at depth 3 (2 nodes) for others; the narrow rows keep their
    first draws. The K-sets still follow the law of target-only beam sampling."""
    trie, K, T = grid_trie([3, 3, 3, 3], 36, seed=2), 2, 1.0
    V = 3 + 12
    target, draft = tiny_lm("llama", V, seed=14), tiny_lm("qwen2", V, seed=24, spread=4.0)
    logp = node_log_probs(target, trie, PROMPT)
    law = beam_sampling_law(trie, logp, K, T)
    assert_has_power(law, beam_sampling_law(trie, logp, K, 1.2 * T))
    dec = SpecBeamDecoder(target, draft, trie, K, (2, 4, 2), gamma=1, verification="exact", draft_policy=policy,
                          temperature=T, seed=9)
    cut, draft_levels = [0], dec._draft

    def logged(state, dft, rnd, *args):
        levels = draft_levels(state, dft, rnd, *args)
        widths = [dec._widths[t_r] for t_r, g_r in zip(rnd.t, rnd.g) if g_r >= 1]
        if len(set(widths)) > 1:
            cut[0] += int((levels[0].live.sum(1) == min(widths)).sum())
        return levels

    dec._draft = logged
    counts, _ = sample_sets(dec, N_SAMPLES)
    assert_matches(counts, law)
    assert cut[0] > 1000   # rows held to the narrower width of a mixed level


def test_relaxed_verification_deviates_from_the_law():
    # The paper's rule with N = 2K > 1 is not distribution-preserving, even with the target as its own draft:
    # every drafted node passes and K of the N are kept uniformly, a flatter law than sequential sampling.
    trie, K, T, target, _, law = setup(3)
    dec = SpecBeamDecoder(target, target, trie, K, 2 * K, gamma=2, verification="relaxed", temperature=T, seed=5)
    counts, _ = sample_sets(dec, N_SAMPLES)
    stat, df, crit = chi_square(counts, law, N_SAMPLES)
    assert stat > crit, f"full law: chi2 = {stat:.1f} <= {crit:.1f} (df {df})"   # measured: ~3.5x crit
    # The deviation concentrates on the first level: the law of the set of first tokens of the K items (a
    # function of the K-set, 6 cells, so little noise) is far off: measured chi2 ~28x its 1e-6 critical value and
    # TVD ~0.04, where sampling noise alone gives a TVD of ~0.003.
    parent = trie.node_parent.tolist()

    def first_tokens(items):
        out = set()
        for node in items:
            while parent[node] != 0:
                node = parent[node]
            out.add(node)
        return frozenset(out)

    law1, counts1 = defaultdict(float), Counter()
    for s, p in law.items():
        law1[first_tokens(s)] += p
    for s, c in counts.items():
        counts1[first_tokens(s)] += c
    stat1, df1, crit1 = chi_square(counts1, law1, N_SAMPLES)
    distance = tvd(counts1, law1, N_SAMPLES)
    assert stat1 > 10 * crit1 and distance > 0.02, f"chi2 = {stat1:.1f} (crit {crit1:.1f}), TVD {distance:.4f}"


def test_exact_with_the_target_as_draft_accepts_more_than_with_an_unrelated_draft():
    trie, K, T, target, draft, law = setup(3)
    rows = 4000

    def mean_accepted(d):
        dec = SpecBeamDecoder(target, d, trie, K, 2 * K, gamma=2, verification="exact", temperature=T, seed=3)
        _, stats = sample_sets(dec, rows)
        return sum(s.mean_accepted_levels for s in stats) / len(stats), stats

    same, same_stats = mean_accepted(target)
    other, _ = mean_accepted(draft)
    assert same == pytest.approx(2.0)                         # q = p: every drafted level passes
    assert all(c == 1 for s in same_stats for c in s.target_calls)
    assert other < same - 0.3


@pytest.mark.parametrize("make", ["target", "relaxed", "exact"])
def test_a_seed_gives_the_same_samples_run_to_run(make):
    trie, K, T, target, draft, _ = setup(3)

    def build(seed):
        if make == "target":
            return BeamSearchDecoder(target, trie, K, do_sample=True, temperature=T, seed=seed)
        return SpecBeamDecoder(target, draft, trie, K, 2 * K, gamma=2, verification=make, temperature=T, seed=seed)

    prompts = torch.tensor([PROMPT]).expand(64, len(PROMPT)).contiguous()
    a, b, c = build(11).generate(prompts), build(11).generate(prompts), build(12).generate(prompts)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.scores, b.scores)
    assert not torch.equal(a.sequences, c.sequences)
    if make != "target":
        assert a.stats.accepted_levels == b.stats.accepted_levels


def test_one_sampling_step_is_sequential_sampling_without_replacement():
    # The op alone on fixed logits: 200,000 draws of K = 3 among the children of 3 beams.
    trie = grid_trie([4, 5], 20, seed=2)
    g = torch.Generator().manual_seed(0)
    n, V, T = 200_000, 12, 0.8
    level1 = list(range(int(trie.level_offsets[1]), int(trie.level_offsets[2])))[:3]
    logits = (torch.randn(1, 3, V, generator=g) * 1.5).expand(n, 3, V).contiguous()
    scores = torch.tensor([[-0.2, -0.9, -1.6]]).expand(n, 3).contiguous()
    nodes = torch.tensor([level1]).expand(n, 3).contiguous()
    live = torch.ones(n, 3, dtype=torch.bool)
    u = torch.rand(n, 3, trie.max_children, generator=g, dtype=torch.float64)
    out_scores, _, _, out_nodes = _ops.trie_beam_sample(logits, scores, nodes, live, trie.child_offsets,
                                                        trie.child_tokens, u, T, 3)
    logp = torch.log_softmax(logits[0].double(), -1)
    co, ct = trie.child_offsets.tolist(), trie.child_tokens.tolist()
    weights = {e + 1: math.exp((float(scores[0, w]) + float(logp[w, ct[e]])) / T)
               for w, node in enumerate(level1) for e in range(co[node], co[node + 1])}
    law = set_law(weights, 3)
    counts = Counter(frozenset(row) for row in out_nodes.tolist())
    assert_matches(counts, law, n)
    # The first draw alone is softmax-distributed.
    first = Counter(out_nodes[:, 0].tolist())
    total = sum(weights.values())
    assert_matches(Counter({frozenset([k]): v for k, v in first.items()}),
                   {frozenset([k]): w / total for k, w in weights.items()}, n)
