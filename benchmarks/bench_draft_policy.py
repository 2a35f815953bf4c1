"""Which drafting policy accepts more: the paper's width-N draft beam search or the K-anchored one?

A synthetic proxy until trained drafts exist: the draft is a copy of a random target whose weights get
Gaussian noise of relative size `sigma` (sigma = 0 is a perfect draft). Reports mean accepted levels per
round and target calls per request of SpecBeamDecoder for each policy, and checks that both stay identical
to BeamSearchDecoder.

    python benchmarks/bench_draft_policy.py [--sigmas 0 0.02 0.05 0.1] [--draft-beams 10 20 40]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from atspeed_ext import BeamSearchDecoder, ItemTrie, SpecBeamDecoder  # noqa: E402


def noisy_copy(model, sigma: float, seed: int):
    draft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * sigma * p.abs().mean())
    return draft


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1])
    p.add_argument("--num-beams", type=common.positive, default=10)
    p.add_argument("--draft-beams", type=common.positive, nargs="+", default=[10, 20, 40])
    p.add_argument("--gamma", type=common.positive, default=3)
    p.add_argument("--requests", type=common.positive, default=16)
    p.add_argument("--name", type=common.results_name, default="draft_policy", help="results file name")
    args = p.parse_args(argv)
    target = common.llama(layers=4, hidden=256)
    with torch.no_grad():
        target.lm_head.weight.mul_(8.0)  # spread the logits like a trained model's
    trie = ItemTrie(common.catalogue(12000))
    ids = common.prompts(args.requests, 40, target.config.vocab_size)
    ref = BeamSearchDecoder(target, trie, args.num_beams).generate(ids)
    rows = []
    for sigma in args.sigmas:
        draft = noisy_copy(target, sigma, seed=1)
        for N in args.draft_beams:
            for policy in ("beam", "anchored"):
                out = SpecBeamDecoder(target, draft, trie, args.num_beams, N, args.gamma,
                                      draft_policy=policy).generate(ids)
                same = bool(torch.equal(out.sequences, ref.sequences))
                row = {"sigma": sigma, "N": N, "policy": policy, "accepted_levels": out.stats.mean_accepted_levels,
                       "target_calls": out.stats.mean_target_calls, "identical": same}
                rows.append(row)
                print(f"sigma {sigma:5.2f}  N {N:3d}  {policy:8s}  accepted/round {row['accepted_levels']:.2f}  "
                      f"target calls/request {row['target_calls']:.2f}  identical {same}", flush=True)
    md = common.write_results(args.name, {
        "command": "python benchmarks/bench_draft_policy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "setting": f"random LLaMA 4x256 target, noisy-copy drafts, 12k-item L=4 trie, {args.requests} prompts of "
                   f"40 tokens, K={args.num_beams}, gamma={args.gamma}"},
        rows, ["sigma", "N", "policy", "accepted_levels", "target_calls", "identical"])
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
