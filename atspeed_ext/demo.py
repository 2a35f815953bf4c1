"""``atspeed-ext demo``: the main job on the embedded default (or ``--data DIR``).

Generates the synthetic data (nothing to download), trains a small target and a draft with progress bars
(cached in the user cache directory, so a second run skips training), decodes test prompts with target-only
beam search and with speculative beam search, and prints Recall@10, NDCG@10, latency per request and the
speedup, checking that both decoders return the same beams.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .commands import check_beams_fit, parse_device, split_prompts, trained_recipe
from .data import load_lcrec
from .decoder import BeamSearchDecoder
from .evaluate import output_recall_ndcg
from .spec_decoder import SpecBeamDecoder
from .synthetic import synthetic_recdata
from .tokenizer import CodeTokenizer
from .train import TrainConfig


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) * 1e3


def run_demo(args) -> int:
    started = time.perf_counter()
    device = parse_device(args.device)
    if args.draft_beams < args.num_beams:  # before any training, not after it
        raise SystemExit(f"error: --draft-beams (N = {args.draft_beams}) must be >= --num-beams (K = "
                         f"{args.num_beams})")
    if args.data:
        data, tag = load_lcrec(args.data), Path(args.data).name
    else:
        data = synthetic_recdata(num_users=args.users, num_items=args.items, seed=args.seed)
        tag = f"synthetic{args.users}x{args.items}"
    check_beams_fit(data, args.num_beams, "--num-beams")  # before any training
    prompts = split_prompts(data, "test", "decode")[:args.requests]
    tokenizer = CodeTokenizer(data.identifiers)
    trie = tokenizer.trie()
    print(f"atspeed_ext demo on {device}: {data.name}, {data.num_items} items, {len(data.train_examples())} "
          f"training examples; K={args.num_beams}, N={args.draft_beams}, gamma={args.gamma}")
    validate = 200 if data.valid_prompts() else 0  # data without validation items trains without validation
    recipe = [TrainConfig(epochs=args.epochs, batch_size=64, lr=3e-3, seed=args.seed, eval_prompts=validate,
                          patience=args.epochs)]  # one stage, cached under a digest of the data and these settings
    target = trained_recipe(args.target_preset, data, tokenizer, recipe, device, f"demo-{tag}")
    # The draft has its own cache tag, and with the target's preset its own seed: it is another model, never the
    # target itself (which would show the best case, every level accepted).
    same = args.draft_preset == args.target_preset
    draft_recipe = [dataclasses.replace(cfg, seed=cfg.seed + 1) for cfg in recipe] if same else recipe
    draft = trained_recipe(args.draft_preset, data, tokenizer, draft_recipe, device, f"demo-{tag}-draft")

    K = args.num_beams
    decoders = {"target-only beam search": BeamSearchDecoder(target, trie, K),
                "speculative beam search": SpecBeamDecoder(target, draft, trie, K, args.draft_beams, args.gamma,
                                                           draft_policy=args.draft_policy)}
    for dec in decoders.values():  # warm-up
        dec.generate([tokenizer.encode_prompt(prompts[0].history)])
    latency = {name: [] for name in decoders}
    quality = {name: ([], []) for name in decoders}
    outputs, calls = {}, []
    batches = [prompts[i:i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    for batch in tqdm(batches, desc="decoding test prompts", unit="batch"):
        encoded = [tokenizer.encode_prompt(p.history) for p in batch]
        for name, dec in decoders.items():
            out, ms = _timed(lambda: dec.generate(encoded))
            latency[name].append(ms / len(batch))
            outputs.setdefault(name, []).append(out)
            for row, p in enumerate(batch):
                r, n = output_recall_ndcg(out, row, p.truth, K)
                quality[name][0].append(r)
                quality[name][1].append(n)
            if hasattr(out, "stats") and out.stats is not None:
                calls += out.stats.target_calls
    same = all(torch.equal(a.sequences, b.sequences) for a, b in zip(*outputs.values()))

    base = statistics.median(latency["target-only beam search"])
    print(f"\n{len(prompts)} test prompts, batches of {args.batch_size}; latency = median over batches of "
          f"ms per request")
    print(f"| decoder | Recall@{K} | NDCG@{K} | ms / request | speedup |")
    print("|---|---|---|---|---|")
    for name in decoders:
        ms = statistics.median(latency[name])
        r, n = (sum(x) / len(x) for x in quality[name])
        print(f"| {name} | {r:.4f} | {n:.4f} | {ms:.2f} | {base / ms:.2f}x |")
    print(f"\nspeculative: {sum(calls) / len(calls):.2f} target calls per request (target-only: {trie.depth}); "
          f"identical beams: {same}")
    print(f"demo took {time.perf_counter() - started:.0f} s")
    return 0 if same else 1
