"""What bounds SpecBeamDecoder's speedup with gamma = 1 on a CPU: its two target calls and the draft's coverage.

On a semantic-ID trie of depth 4, a speculative decode with gamma = 1 needs at least two rounds: round 1 scores
the prompt and a level-1 tree of N nodes in one target call (level 2 comes free as the bonus), round 2 scores the
K pending beams and a level-3 tree (level 4 free). (gamma >= 2 could end in one call, but needs level 2 drafted
from the draft's own level-1 nodes accepted, which these drafts almost never achieve.) Beam search makes four
calls: the prompt, then K tokens three times. This measures, on Beauty test prompts with the trained models:

1. **Coverage** per level j = 1, 2, 3: the share of requests whose target top-K at level j lies among the
   draft's N best candidates, ranked as SpecBeamDecoder ranks a level drafted from the target's own depth j - 1
   beams (target score so far + draft log-probability): the acceptance of that level in a one-level round.
   (Scores come from plain forwards; in bfloat16 near-ties may rank differently inside the decoder.)
2. **Time** (batch 1, one request at a time): for each N and prompt, a ``BeamSearchDecoder`` decode, then the
   two target calls above (the prefill with N tree nodes; after compacting to K kept nodes, K + N nodes) and the
   draft's two calls (its prefill; K pending chains of 2 tokens; a round whose tree fits the trie skips it).
   Their ratio, the median over --reps pairs timed back to back, is an **upper bound** on the speedup at N: it
   assumes every level accepted and leaves out the beam-step, tree-building, verification and compaction work.

    python benchmarks/spec_cost_model.py --target DIR --draft DIR [--data ../shared/data/beauty] [--beams 10]
        [--widths 10 20 30 40 50 60] [--requests 200] [--timing-prompts 8] [--reps 5] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from atspeed_ext import BeamSearchDecoder  # noqa: E402
from atspeed_ext.tree_kv import ROOT, TreeKV  # noqa: E402


def last_log_probs(model, prompt: list[int], prefixes: list[list[int]]) -> torch.Tensor:
    """Log-probabilities of the next token after ``prompt + prefix`` for each prefix (one batched call)."""
    ids, mask = common.left_pad([prompt + prefix for prefix in prefixes], 0, "cpu")
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    return torch.log_softmax(logits[:, -1].float(), -1)


def needed_widths(target, draft, trie, prompt: list[int], K: int, levels: int) -> list[int]:
    """For j = 1..levels: the smallest N whose draft-ranked level-j candidates (children of the target's K beams
    at depth j - 1, by target score so far + draft log-probability) hold the target's top-K at level j."""
    beams, needed = [([], 0.0)], []
    for _ in range(levels):
        lp_t = last_log_probs(target, prompt, [b for b, _ in beams])
        lp_d = last_log_probs(draft, prompt, [b for b, _ in beams])
        cands = [(b + [c], s + float(lp_t[i, c]), s + float(lp_d[i, c]))
                 for i, (b, s) in enumerate(beams) for c in trie.children(b)]
        by_target = sorted(range(len(cands)), key=lambda i: -cands[i][1])[:K]
        rank = {i: r for r, i in enumerate(sorted(range(len(cands)), key=lambda i: -cands[i][2]))}
        needed.append(1 + max(rank[i] for i in by_target))
        beams = [(cands[i][0], cands[i][1]) for i in by_target]
    return needed


def speculative_calls_ms(target, draft, prompt: list[int], K: int, N: int) -> float:
    """Wall ms of a request's two target calls (the prefill with N tree nodes; K + N nodes after keeping K) and
    the draft's two (its prefill; 2K pending tokens), without the work between them."""
    ids, mask = torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long)
    roots = lambda m: torch.full((1, m), ROOT)  # noqa: E731
    tokens = lambda m: torch.full((1, m), 3)  # noqa: E731  (a code token; the cost does not depend on it)
    total = 0.0
    tgt, dft = TreeKV(target), TreeKV(draft)
    for call in (lambda: tgt.prefill(ids, mask, tokens(N), roots(N)), lambda: dft.prefill(ids, mask)):
        start = time.perf_counter()
        call()
        total += time.perf_counter() - start
    P = len(prompt)
    tgt.compact(torch.arange(P, P + K).view(1, K))  # the K accepted level-1 nodes stay
    for call in (lambda: tgt.feed(tokens(K + N), roots(K + N)), lambda: dft.feed(tokens(2 * K), roots(2 * K))):
        start = time.perf_counter()
        call()
        total += time.perf_counter() - start
    return 1e3 * total


def beam_search_ms(decoder: BeamSearchDecoder, prompt: list[int]) -> float:
    start = time.perf_counter()
    decoder.generate([prompt])
    return 1e3 * (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_arguments(p)
    p.add_argument("--widths", type=common.positive, nargs="+", default=[10, 20, 30, 40, 50, 60])
    p.add_argument("--requests", type=common.positive, default=200, help="test prompts for the coverage (default 200)")
    p.add_argument("--timing-prompts", type=common.positive, default=8, help="test prompts timed (default 8)")
    p.add_argument("--reps", type=common.positive, default=5)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--name", type=common.results_name, default="spec_cost_model_cpu")
    args = p.parse_args(argv)
    if min(args.widths) < args.beams:
        p.error(f"every width must be >= --beams ({args.beams})")
    torch.set_grad_enabled(False)
    dtype = getattr(torch, args.dtype)
    target, draft, trie, prompts = common.load_models_and_prompts(args, "cpu", dtype)
    K = args.beams

    needed = [needed_widths(target, draft, trie, prompt, K, trie.depth - 1) for prompt in prompts]
    timed = prompts[:args.timing_prompts]
    decoder = BeamSearchDecoder(target, trie, K)
    rows = []
    for N in args.widths:
        beam, spec, ratios = [], [], []
        for prompt in timed:
            beam_search_ms(decoder, prompt)  # warm-up
            speculative_calls_ms(target, draft, prompt, K, N)
            pairs = [(beam_search_ms(decoder, prompt), speculative_calls_ms(target, draft, prompt, K, N))
                     for _ in range(args.reps)]
            beam.append(statistics.median(b for b, _ in pairs))
            spec.append(statistics.median(s for _, s in pairs))
            ratios.append(statistics.median(b / s for b, s in pairs))  # paired: robust to the machine's drift
        bound = statistics.median(ratios)
        coverage = {f"coverage_L{j + 1}": f"{sum(n[j] <= N for n in needed) / len(needed):.2f}"
                    for j in range(trie.depth - 1)}
        rows.append({"N": N, **coverage, "beam_search_ms": f"{statistics.mean(beam):.2f}",
                     "spec_4calls_ms": f"{statistics.mean(spec):.2f}", "bound": f"{bound:.2f}"})
        print("  ".join(f"{k} {v}" for k, v in rows[-1].items()))
    quantiles = {f"needed_L{j + 1}": [sorted(n[j] for n in needed)[round(q * (len(needed) - 1))]
                                      for q in (0.25, 0.5, 0.75, 0.9)] for j in range(trie.depth - 1)}
    print("needed widths (quartiles and 90th percentile):", quantiles)
    command = "python benchmarks/spec_cost_model.py " + " ".join(sys.argv[1:] if argv is None else argv)
    md = common.write_results(args.name, {
        "command": command, "threads": torch.get_num_threads(),
        "target": args.target, "draft": args.draft, "dtype": args.dtype, "K": K,
        "coverage prompts": len(prompts), "timed prompts": len(timed),
        "needed widths (25/50/75/90th percentiles)": quantiles,
        "note": "coverage_Lj = share of requests whose target top-K at level j is among the draft's N best "
                "(from the target's own depth j-1 beams); spec_4calls_ms = the two target and two draft calls of a "
                "gamma-1 decode; beam_search_ms / spec_4calls_ms: means over timed prompts of per-prompt medians; "
                "bound = median over timed prompts of the median of --reps back-to-back ratios BeamSearchDecoder ms / "
                "spec_4calls_ms: the speedup if every level were accepted, without "
                "beam-step, tree-building, verification and compaction work"}, rows, list(rows[0]))
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
