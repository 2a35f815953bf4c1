"""Draft alignment results on Beauty: for each trained draft (one per objective), strict speculative beam
search with the trained target on a fixed test subset (the first R test prompts, batch 1).

Reported per draft, K and N (gamma fixed): mean accepted levels per round, target calls per request, ms per
request and the speedup over BeamSearchDecoder (the median of --reps passes, each paired with a BeamSearchDecoder
pass), Recall@K / NDCG@K (which must equal the target's: strict verification is lossless), and whether every
output equals the target's (a warning is printed, and the header says so, where one does not).

    python benchmarks/bench_align.py --target DIR --draft ce=DIR --draft atspeed-s=DIR ...
        [--data ../shared/data/beauty] [--beams 5 10 20] [--draft-beams 40] [--gamma 3] [--requests 100] [--reps 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from atspeed_ext import BeamSearchDecoder, SpecBeamDecoder  # noqa: E402
from atspeed_ext.models import load_checkpoint  # noqa: E402
from atspeed_ext.tokenizer import CodeTokenizer  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=common.data_dir, default=common.DEFAULT_DATA,
                   help="LC-Rec data (default ../shared/data/beauty)")
    p.add_argument("--target", required=True, help="target checkpoint directory")
    p.add_argument("--draft", action="append", required=True, metavar="[NAME=]DIR",
                   help="a draft checkpoint and its label (repeat; a bare DIR is named after its run folder)")
    p.add_argument("--beams", type=common.positive, nargs="+", default=[5, 10, 20])
    p.add_argument("--draft-beams", type=common.positive, nargs="+", default=[40])
    p.add_argument("--gamma", type=common.positive, default=3)
    p.add_argument("--requests", type=common.positive, default=100)
    p.add_argument("--batch", type=common.positive, default=1)
    p.add_argument("--reps", type=common.positive, default=3,
                   help="timed passes per row, each paired with a BeamSearchDecoder pass (default 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--name", type=common.results_name, default=None, help="results file name (default align_beauty_<device>)")
    args = p.parse_args(argv)

    device = common.device(args.device)
    data = common.load_data(args.data)
    tok = CodeTokenizer(data.identifiers)
    target, _ = load_checkpoint(args.target, device, identifiers=data.identifiers)
    draft_dirs = common.parse_drafts(args.draft)
    drafts = {name: load_checkpoint(path, device, identifiers=data.identifiers)[0] for name, path in draft_dirs.items()}
    trie = tok.trie().to(device)
    test = data.test_prompts()[:args.requests]
    encoded = [tok.encode_prompt(q.history) for q in test]
    batches = [encoded[i:i + args.batch] for i in range(0, len(encoded), args.batch)]
    print(f"{len(test)} Beauty test prompts, batch {args.batch}, gamma {args.gamma}, on {common.machine()}")

    rows = []
    for K in args.beams:
        base = BeamSearchDecoder(target, trie, K)
        base.generate(batches[0])
        base_ms, base_outs = common.median_run(base.generate, batches, args.reps)
        rec, ndcg = common.quality(base_outs, test, K)
        rows.append({"K": K, "N": "", "draft": "(target only)", "accepted": "", "target_calls": float(trie.depth),
                     "ms_per_req": base_ms / len(test), "speedup": 1.0, "recall": rec, "ndcg": ndcg, "identical": True})
        _print(rows[-1])
        for N in args.draft_beams:
            if N < K:
                continue
            for name, draft in drafts.items():
                spec = SpecBeamDecoder(target, draft, trie, K, N, args.gamma)
                spec.generate(batches[0])
                ms, speedup, outs, _ = common.paired_runs(base.generate, spec.generate, batches, args.reps)
                same = all(torch.equal(a.sequences, b.sequences) for a, b in zip(outs, base_outs))
                if not same:
                    print(f"warning: {name} at K {K}, N {N}: lists differ from BeamSearchDecoder's (float rounding "
                          "of near-ties in another call shape, or a bug)", flush=True)
                rounds = [n for o in outs for r in o.stats.accepted_levels for n in r]
                calls = [c for o in outs for c in o.stats.target_calls]
                rec, ndcg = common.quality(outs, test, K)
                rows.append({"K": K, "N": N, "draft": name, "accepted": sum(rounds) / len(rounds),
                             "target_calls": sum(calls) / len(calls), "ms_per_req": ms / len(test),
                             "speedup": speedup, "recall": rec, "ndcg": ndcg, "identical": same})
                _print(rows[-1])
    header = {"command": "python benchmarks/bench_align.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "data": f"{args.data}: first {len(test)} test prompts", "target": args.target,
              "drafts": draft_dirs, "all lists identical to BeamSearchDecoder's": all(r["identical"] for r in rows),
              "note": "accepted = mean accepted levels per round; recall/ndcg at @K; speedup over BeamSearchDecoder: "
                      "the median of --reps paired passes (ms: median)"}
    md = common.write_results(args.name or f"align_beauty_{device.type}", header, rows,
                              ["K", "N", "draft", "accepted", "target_calls", "ms_per_req", "speedup", "recall",
                               "ndcg", "identical"])
    print(f"\nwrote {md}")


def _print(r: dict) -> None:
    acc = f"{r['accepted']:.2f}" if r["accepted"] != "" else "  - "
    print(f"K {r['K']:2d} N {str(r['N']):>3s} {r['draft']:14s} accepted {acc} calls {r['target_calls']:.2f} "
          f"{r['ms_per_req']:7.2f} ms/req speedup {r['speedup']:.2f}x recall {r['recall']:.4f} ndcg {r['ndcg']:.4f} "
          f"identical {r['identical']}", flush=True)


if __name__ == "__main__":
    main()
