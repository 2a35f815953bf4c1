"""Speculative beam search on Beauty: SpecBeamDecoder vs BeamSearchDecoder vs Hugging Face ``generate``.

The trained target and a draft trained with plain cross-entropy decode a fixed subset of Beauty test prompts
(the first R, in file order), side by side in one run: for each K, the target-only decoders first, then every
(N, gamma, draft policy) of the grid. Every output is compared with BeamSearchDecoder's (identical lists counted).
Reported per point: mean accepted levels per round, target calls per request, ms per request at batch 1 and
requests per second at batch 16, and speedups over BeamSearchDecoder and HF. Times are medians over --reps
passes, and each speculative pass is paired with a BeamSearchDecoder pass run just before it: the speedup is the
median of those paired ratios, so a machine whose speed drifts during the grid does not bias it.

``--dtype bfloat16`` runs both models in bfloat16 (AMX on recent Xeons, tensor cores on GPUs). Rounding then
depends on the shapes of each call (a tree of N nodes vs K beams, batch 1 vs 16), so a few near-tied lists can
differ from BeamSearchDecoder's; the table counts identical lists, and the header gives the same count for
BeamSearchDecoder against itself at another batch size (the rounding noise floor). ``--draft-dtype`` gives the
draft its own precision (default: ``--dtype``): the output does not depend on the draft's rounding, and on a CPU a
tiny draft runs faster in float32 (no conversions around its norms and rotary embeddings). ``--prepack`` packs
the bfloat16 models' linear layers for oneDNN once (``atspeed_ext.prepack_for_cpu``; CPU only): every decoder,
HF ``generate`` included, runs the same packed models. ``--compile`` runs our decoders' models through
``torch.compile`` (dynamic shapes, Inductor freezing, which folds and packs the weights); HF ``generate`` runs
them uncompiled. The first decodes compile, so with it each decoder first decodes every batch once untimed.

    python benchmarks/bench_spec_beauty.py --target DIR --draft DIR [--data ../shared/data/beauty]
        [--beams 1 5 10 20] [--gammas 1 2 3] [--requests 48] [--batches 1 16] [--device cpu] [--dtype float32]
        [--draft-dtype float32] [--prepack] [--compile]

Without --target / --draft the models are trained first by the README's final recipes (``TARGET_RECIPE``,
``DRAFT_RECIPE``: the dropout recipe then the recency fine-tune on the validation items, the draft's plain
cross-entropy run given the same fine-tune; hours on a 2-core CPU) and cached in the user cache directory
($ATSPEED_CACHE or ~/.cache/atspeed_ext), stage by stage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from atspeed_ext import BeamSearchDecoder, SpecBeamDecoder, prepack_for_cpu  # noqa: E402
from atspeed_ext.cli import draft_widths  # noqa: E402
from atspeed_ext.commands import trained_recipe, width_text  # noqa: E402
from atspeed_ext.hf import hf_constrained_beam_search  # noqa: E402
from atspeed_ext.models import load_checkpoint  # noqa: E402
from atspeed_ext.tokenizer import CodeTokenizer  # noqa: E402
from atspeed_ext.train import TrainConfig  # noqa: E402

#: The README's final target (``train-target --preset target-8x512 --epochs 3 --lr 5e-4 --weight-decay 0.1
#: --dropout 0.1 --precision bf16``, then ``--init RUN/best --valid-only --epochs 2 --lr 1e-4 --warmup-ratio 0.1
#: --weight-decay 0.1 --dropout 0.1 --precision bf16``) and its plain cross-entropy draft with the same fine-tune.
TARGET_RECIPE = (TrainConfig(epochs=3, lr=5e-4, weight_decay=0.1, dropout=0.1, precision="bf16"),
                 TrainConfig(epochs=2, lr=1e-4, warmup_ratio=0.1, weight_decay=0.1, dropout=0.1, precision="bf16",
                             valid_only=True))
DRAFT_RECIPE = (TrainConfig(epochs=5, lr=3e-3, precision="bf16"),
                TrainConfig(epochs=2, lr=6e-4, warmup_ratio=0.1, precision="bf16", valid_only=True))


def draft_width(text: str) -> int | tuple[int, ...]:
    """A --draft-beams entry: -m (m*K), or as atspeed-ext eval's: N, or one width per trie depth N1,N2,..."""
    if text.startswith("-") and text[1:].isdigit() and int(text[1:]) > 0:
        return int(text)
    return draft_widths(text)


def draft_grid(K: int, widths: list) -> list:
    """The grid's widths for beam size K: ints (-m: m*K) ascending, then the per-depth tuples, those below K
    left out."""
    ints = sorted({w if w > 0 else -w * K for w in widths if isinstance(w, int) and (w if w > 0 else -w * K) >= K})
    return ints + [w for w in dict.fromkeys(widths) if isinstance(w, tuple) and min(w) >= K]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=common.data_dir, default=common.DEFAULT_DATA,
                   help="LC-Rec data (default ../shared/data/beauty)")
    p.add_argument("--target", default=None,
                   help="target checkpoint directory (default: train target-8x512 by TARGET_RECIPE)")
    p.add_argument("--draft", default=None,
                   help="draft checkpoint directory (default: train draft-1x128 by DRAFT_RECIPE: CE)")
    p.add_argument("--beams", type=common.positive, nargs="+", default=[1, 5, 10, 20])
    p.add_argument("--draft-beams", type=draft_width, nargs="+", default=[-1, -2, 40],
                   help="N values; -m means m*K; N1,N2,... gives one width per trie depth; widths below a K are "
                        "skipped at that K, with a note (default: K, 2K, 40)")
    p.add_argument("--gammas", type=common.positive, nargs="+", default=[1, 2, 3])
    p.add_argument("--policies", nargs="+", choices=["beam", "anchored"], default=["beam", "anchored"])
    p.add_argument("--batches", type=common.positive, nargs="+", default=[1, 16])
    p.add_argument("--requests", type=common.positive, default=48, help="test prompts decoded per point (default 48)")
    p.add_argument("--reps", type=common.positive, default=3,
                   help="timed passes per point; each speculative pass is paired with a BeamSearchDecoder pass "
                        "right before it and vs_beam is the median of the paired ratios (default 3)")
    p.add_argument("--no-hf", action="store_true", help="skip Hugging Face generate")
    p.add_argument("--no-skip-exhaustive", action="store_true",
                   help="call the draft in every round (SpecBeamDecoder(skip_exhaustive_draft=False))")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights and compute of both models (default float32)")
    p.add_argument("--draft-dtype", choices=["float32", "bfloat16"], default=None,
                   help="weights and compute of the draft (default: --dtype)")
    p.add_argument("--prepack", action="store_true",
                   help="pack the bfloat16 models' linear layers once for oneDNN (prepack_for_cpu; CPU only)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the target and draft for our decoders (dynamic shapes, Inductor freezing); "
                        "HF generate runs them uncompiled")
    p.add_argument("--name", type=common.results_name, default=None, help="results file name (default spec_beauty_<device>)")
    args = p.parse_args(argv)
    if args.prepack and args.dtype != "bfloat16":  # checked before any model loads (or trains)
        p.error("--prepack packs bfloat16 layers: use it with --dtype bfloat16")

    device = common.device(args.device)
    data = common.load_data(args.data)
    tokenizer = CodeTokenizer(data.identifiers)
    if args.target:
        target, _ = load_checkpoint(args.target, device, identifiers=data.identifiers)
    else:
        target = trained_recipe("target-8x512", data, tokenizer, TARGET_RECIPE, device, tag=data.name)
    if args.draft:
        draft, _ = load_checkpoint(args.draft, device, identifiers=data.identifiers)
    else:
        draft = trained_recipe("draft-1x128", data, tokenizer, DRAFT_RECIPE, device, tag=data.name)
    args.draft_dtype = args.draft_dtype or args.dtype
    target, draft = target.to(getattr(torch, args.dtype)).eval(), draft.to(getattr(torch, args.draft_dtype)).eval()
    if args.prepack:  # the draft too when it is bfloat16 (float32 layers are faster unpacked)
        try:
            for model in (target, draft) if args.draft_dtype == "bfloat16" else (target,):
                prepack_for_cpu(model)
        except ValueError as exc:
            p.error(f"--prepack: {exc}")
    hf_target = target  # HF generate runs the model as loaded (and packed), never compiled
    if args.compile:
        import torch._inductor.config as inductor_config  # (as a name: a bare import would make torch local)

        inductor_config.freezing = True  # weights as constants: folded and packed for oneDNN
        target, draft = (torch.compile(m, dynamic=True) for m in (target, draft))
    trie = tokenizer.trie().to(device)
    too_long = [w for w in args.draft_beams if isinstance(w, tuple) and len(w) > trie.depth - 1]
    if too_long:  # before any decoding (widths below a K are skipped at that K, with a note)
        p.error(common.widths_error(too_long[0], 1, trie.depth))
    queries = data.test_prompts()[:args.requests]
    prompts = [tokenizer.encode_prompt(q.history) for q in queries]
    print(f"{len(prompts)} Beauty test prompts (mean {sum(map(len, prompts)) / len(prompts):.1f} tokens) on "
          f"{common.machine()}")

    rows, first_batch_outs, noise_floor = [], {}, {}
    for K in args.beams:
        for B in args.batches:
            batches = [prompts[i:i + B] for i in range(0, len(prompts), B)]
            warm_up = batches if args.compile else batches[:1]  # compiled: every shape compiles before timing
            base = BeamSearchDecoder(target, trie, K)
            for batch in warm_up:
                base.generate(batch)
            base_ms, base_outs = common.median_run(base.generate, batches, args.reps)
            if K in first_batch_outs:  # BeamSearchDecoder against itself at another batch size
                noise_floor[f"K={K}, batch {B} vs {args.batches[0]}"] = same_lists(base_outs, first_batch_outs[K])
            else:
                first_batch_outs[K] = base_outs
            identical = lambda outs: same_lists(outs, base_outs)  # noqa: E731
            recall = lambda outs: common.quality(outs, queries, K)[0]  # noqa: E731
            row0 = {"K": K, "batch": B, "decoder": "BeamSearchDecoder", "N": "", "gamma": "", "policy": "",
                    "accepted": "", "target_calls": float(trie.depth), "draft_calls": "",
                    "ms_per_req": base_ms / len(prompts), "beam_ms_paired": "",
                    "req_per_s": 1e3 * len(prompts) / base_ms, "vs_beam": 1.0, "vs_hf": "",
                    "identical": f"{len(prompts)}/{len(prompts)}", "recall": recall(base_outs)}
            hf_ms = None
            if not args.no_hf:
                padded = [common.left_pad(b, tokenizer.pad_token_id, device) for b in batches]
                hf = lambda x: hf_constrained_beam_search(hf_target, trie, x[0], x[1], K)  # noqa: E731
                hf(padded[0])  # warm-up, as for the other decoders
                hf_ms, hf_outs = common.median_run(hf, padded, args.reps)
                same = identical(hf_outs)
                rows.append({**row0, "decoder": "HF generate", "ms_per_req": hf_ms / len(prompts),
                             "req_per_s": 1e3 * len(prompts) / hf_ms, "vs_beam": base_ms / hf_ms, "vs_hf": 1.0,
                             "identical": same, "recall": recall(hf_outs)})
                row0["vs_hf"] = hf_ms / base_ms
            rows.append(row0)
            _print(rows[-2:] if hf_ms else rows[-1:])
            grid = draft_grid(K, args.draft_beams)
            if B == args.batches[0]:
                for w in args.draft_beams:
                    if (w if isinstance(w, tuple) else w if w > 0 else -w * K) not in grid:
                        print(f"note: {common.widths_error(w, K, trie.depth)}: skipped at K = {K}", file=sys.stderr)
            for N in grid:
                for gamma in args.gammas:
                    for policy in args.policies:
                        spec = SpecBeamDecoder(target, draft, trie, K, N, gamma, draft_policy=policy,
                                               skip_exhaustive_draft=not args.no_skip_exhaustive)
                        for batch in warm_up:
                            spec.generate(batch)
                        ms, vs_beam, outs, paired_ms = common.paired_runs(base.generate, spec.generate, batches,
                                                                          args.reps)
                        same = identical(outs)
                        calls = [c for o in outs for c in o.stats.target_calls]
                        draft_calls = [c for o in outs for c in o.stats.draft_calls]
                        rounds = [n for o in outs for r in o.stats.accepted_levels for n in r]
                        rows.append({"K": K, "batch": B, "decoder": "SpecBeamDecoder", "N": width_text(N),
                                     "gamma": gamma,
                                     "policy": policy, "accepted": sum(rounds) / len(rounds),
                                     "target_calls": sum(calls) / len(calls),
                                     "draft_calls": sum(draft_calls) / len(draft_calls),
                                     "ms_per_req": ms / len(prompts), "beam_ms_paired": paired_ms / len(prompts),
                                     "req_per_s": 1e3 * len(prompts) / ms, "vs_beam": vs_beam,
                                     "vs_hf": hf_ms / ms if hf_ms else "", "identical": same,
                                     "recall": recall(outs)})
                        _print(rows[-1:])
    header = {"command": "python benchmarks/bench_spec_beauty.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "data": f"{args.data}: first {len(prompts)} test prompts",
              "target": args.target or "target-8x512 (trained by this script)",
              "draft": args.draft or "draft-1x128, cross-entropy (trained by this script)",
              "dtype": args.dtype, "draft_dtype": args.draft_dtype, "prepack": args.prepack, "compile": args.compile,
              "skip_exhaustive_draft": not args.no_skip_exhaustive,
              "note": "accepted = mean accepted levels per round; target_calls, draft_calls (draft forwards) per "
                      "request; vs_beam / vs_hf = speedup of this row over BeamSearchDecoder / HF generate at the "
                      "same K and batch (vs_beam: median of per-round ratios, each speculative pass timed right "
                      "next to a BeamSearchDecoder pass, the order alternating; ms: medians over --reps passes; "
                      "beam_ms_paired: BeamSearchDecoder's median ms per request in those pairs, the base of vs_beam); "
                      "identical = requests whose "
                      "K sequences equal BeamSearchDecoder's, in order; recall = Recall@K of the row's lists"}
    if noise_floor:
        header["BeamSearchDecoder vs itself (identical lists)"] = noise_floor
    md = common.write_results(args.name or f"spec_beauty_{device.type}", header, rows,
                              ["K", "batch", "decoder", "N", "gamma", "policy", "accepted", "target_calls",
                               "draft_calls", "ms_per_req", "beam_ms_paired", "req_per_s", "vs_beam", "vs_hf",
                               "identical", "recall"])
    print(f"\nwrote {md}")


def same_lists(outs, base_outs) -> str:
    """``"identical/total"``: requests whose K sequences equal the baseline's, in order."""
    ours = torch.cat([o.sequences.cpu() for o in outs])  # [requests, K, L], whatever the batch size
    theirs = torch.cat([o.sequences.cpu() for o in base_outs])
    return f"{int((ours == theirs).flatten(1).all(1).sum())}/{ours.shape[0]}"


def _print(rows):
    for r in rows:
        acc = f"{r['accepted']:.2f}" if r["accepted"] != "" else "  - "
        vs_hf = f"{r['vs_hf']:.2f}x" if r["vs_hf"] != "" else "  -  "
        print(f"K {r['K']:2d} B {r['batch']:2d} {r['decoder']:17s} N {str(r['N']):>3s} g {str(r['gamma']):>1s} "
              f"{r['policy']:8s} acc {acc} calls {r['target_calls']:.2f} {r['ms_per_req']:8.2f} ms/req "
              f"{r['req_per_s']:7.1f} req/s  vs beam {r['vs_beam']:.2f}x  vs HF {vs_hf}  same {r['identical']} "
              f"R@K {r['recall']:.4f}",
              flush=True)


if __name__ == "__main__":
    main()
