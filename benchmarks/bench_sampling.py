"""Speculative beam *sampling* on Beauty: relaxed (the paper's, lossy) vs exact sampling verification vs
target-only beam sampling, with greedy beam search for reference.

The trained target and each draft decode a fixed subset of Beauty test prompts (the first R, in file order).
Reported per K (and per draft, N and rule): mean accepted levels per round, target calls per request, ms per
request, the speedup over target-only beam sampling (``BeamSearchDecoder(do_sample=True)``) measured in the
same run, and Recall@K / NDCG@K of the K sampled items (one sample per prompt; the ranking is best score
first). Every sampling decoder gets the same temperature and seed.

    python benchmarks/bench_sampling.py --target DIR --draft [NAME=]DIR [--draft ...]
        [--data ../shared/data/beauty] [--beams 5 10 20] [--draft-beams 40 30,30,15] [--gamma 3] [--requests 100]
        [--temperature 1.0] [--seed 0] [--batch 1] [--device cpu] [--name NAME] [--no-save]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from atspeed_ext import BeamSearchDecoder, SpecBeamDecoder  # noqa: E402
from atspeed_ext.cli import draft_widths  # noqa: E402
from atspeed_ext.commands import width_text  # noqa: E402
from atspeed_ext.models import load_checkpoint  # noqa: E402
from atspeed_ext.tokenizer import CodeTokenizer  # noqa: E402

COLUMNS = ["K", "decoder", "draft", "N", "accepted", "target_calls", "ms_per_req", "speedup", "recall", "ndcg"]


def run(decoder, batches, prompts, K, row: dict, base, reps: int):
    """Time ``decoder`` (median of ``reps`` passes; with a ``base`` decoder, each pass paired with one of the base
    and the speedup the median of the paired ratios), fill ``row`` with its results; return ``row``."""
    decoder.generate(batches[0])  # warm-up
    if base is None:
        ms, outs = common.median_run(decoder.generate, batches, reps)
        speedup = 1.0
    else:
        ms, speedup, outs, _ = common.paired_runs(base.generate, decoder.generate, batches, reps)
    rec, ndcg = common.quality(outs, prompts, K)
    stats = [o.stats for o in outs if getattr(o, "stats", None) is not None]
    if stats:
        rounds = [n for s in stats for r in s.accepted_levels for n in r]
        calls = [c for s in stats for c in s.target_calls]
        row.update(accepted=sum(rounds) / len(rounds), target_calls=sum(calls) / len(calls))
    row.update(ms_per_req=ms / len(prompts), speedup=speedup, recall=rec, ndcg=ndcg)
    _print(row)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=common.data_dir, default=common.DEFAULT_DATA,
                   help="LC-Rec data (default ../shared/data/beauty)")
    p.add_argument("--target", required=True, help="target checkpoint directory")
    p.add_argument("--draft", action="append", required=True, metavar="[NAME=]DIR",
                   help="a draft checkpoint, optionally labelled (repeat for several drafts)")
    p.add_argument("--beams", type=common.positive, nargs="+", default=[5, 10, 20])
    p.add_argument("--draft-beams", type=draft_widths, nargs="+", default=[40],
                   help="N values, or one width per trie depth N1,N2,... (those with a width below K are skipped)")
    p.add_argument("--gamma", type=common.positive, default=3)
    p.add_argument("--rules", nargs="+", default=["relaxed", "exact"], choices=["relaxed", "exact"])
    p.add_argument("--requests", type=common.positive, default=100, help="test prompts decoded per point (default 100)")
    p.add_argument("--temperature", type=common.positive_float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=common.positive, default=1)
    p.add_argument("--reps", type=common.positive, default=3,
                   help="timed passes per row, each paired with a pass of target-only beam sampling (default 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--name", type=common.results_name, default=None, help="results file name (default sampling_beauty_<device>)")
    p.add_argument("--no-save", action="store_true", help="print only (smoke runs)")
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
    T, seed = args.temperature, args.seed
    print(f"{len(test)} Beauty test prompts, batch {args.batch}, gamma {args.gamma}, T {T}, seed {seed}, on "
          f"{common.machine()}")

    rows = []
    for K in args.beams:
        blank = {"K": K, "draft": "", "N": "", "accepted": "", "target_calls": float(trie.depth)}
        base = BeamSearchDecoder(target, trie, K, do_sample=True, temperature=T, seed=seed)
        sampled = run(base, batches, test, K, {**blank, "decoder": "beam sampling"}, None, args.reps)
        greedy = run(BeamSearchDecoder(target, trie, K), batches, test, K, {**blank, "decoder": "beam search"}, base,
                     args.reps)
        rows += [sampled, greedy]
        for N in args.draft_beams:
            if min(N if isinstance(N, tuple) else (N,)) < K:
                continue
            for name, draft in drafts.items():
                for rule in args.rules:
                    spec = SpecBeamDecoder(target, draft, trie, K, N, args.gamma, verification=rule, temperature=T,
                                           seed=seed)
                    row = run(spec, batches, test, K, {"K": K, "decoder": f"spec {rule} ({spec.draft_policy})",
                                                       "draft": name, "N": N if isinstance(N, int) else width_text(N)},
                              base, args.reps)
                    rows.append(row)
    if args.no_save:
        return
    header = {"command": "python benchmarks/bench_sampling.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "data": f"{args.data}: first {len(test)} test prompts", "target": args.target, "drafts": draft_dirs,
              "sampling": f"temperature {T}, seed {seed}, batch {args.batch}, gamma {args.gamma}",
              "note": "accepted = mean accepted levels per round; target_calls per request; speedup over target-only "
                      "beam sampling: the median of --reps paired passes (ms: median); recall / ndcg @K of one sample per prompt (beam search: the "
                      "top-K). relaxed is lossy (the paper's rule); exact has the law of beam sampling"}
    md = common.write_results(args.name or f"sampling_beauty_{device.type}", header, rows, COLUMNS)
    print(f"\nwrote {md}")


def _print(r: dict) -> None:
    acc = f"{r['accepted']:.2f}" if r["accepted"] != "" else "  - "
    print(f"K {r['K']:2d} {r['decoder']:26s} {r['draft']:22s} N {str(r['N']):>3s} accepted {acc} "
          f"calls {r['target_calls']:.2f} {r['ms_per_req']:8.2f} ms/req speedup {r['speedup']:.2f}x "
          f"recall {r['recall']:.4f} ndcg {r['ndcg']:.4f}", flush=True)


if __name__ == "__main__":
    main()
