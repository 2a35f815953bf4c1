"""``atspeed-ext demo``: constrained beam search on the embedded synthetic default, timed against HF."""

from __future__ import annotations

import statistics
import time

import torch
from tqdm.auto import tqdm

from .decoder import BeamSearchDecoder
from .hf import hf_constrained_beam_search
from .synthetic import NUM_SPECIAL_TOKENS, random_prompts, small_llama, synthetic_identifiers
from .trie import ItemTrie


def _left_pad(prompts, device):
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    return ids.to(device), mask.to(device)


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) * 1e3


def run_demo(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was given but no CUDA GPU is available")
    print(f"atspeed_ext demo on {device}: {args.items} synthetic items, K={args.num_beams}, "
          f"{args.requests} requests in batches of {args.batch_size}")
    identifiers = synthetic_identifiers(args.items, depth=4, codes_per_level=args.codes, seed=args.seed,
                                        num_shared=min(12, args.items - 1))
    vocab = NUM_SPECIAL_TOKENS + 4 * args.codes
    trie = ItemTrie(identifiers, eos_token_id=2, vocab_size=vocab)
    print(f"trie: {trie}")
    model = small_llama(vocab, layers=args.layers, hidden=args.hidden, seed=args.seed).to(device)
    print(f"model: LLaMA, {args.layers} layers, hidden {args.hidden}, vocab {vocab}, random weights "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    prompts = random_prompts(args.requests, identifiers, seed=args.seed)
    batches = [prompts[i:i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    decoder = BeamSearchDecoder(model, trie, num_beams=args.num_beams)
    decoder.generate(batches[0][:1])  # warm-up

    ours_ms, hf_ms, mismatches, first = [], [], 0, None
    for batch in tqdm(batches, desc="decoding", unit="batch"):
        ids, mask = _left_pad(batch, device)
        out, ms = _timed(lambda: decoder.generate(ids, mask))
        ours_ms.append(ms / len(batch))
        first = first or (batch[0], out)
        if not args.skip_hf:
            ref, ms = _timed(lambda: hf_constrained_beam_search(model, trie, ids, mask, args.num_beams))
            hf_ms.append(ms / len(batch))
            mismatches += int(not torch.equal(out.sequences.cpu(), ref.sequences.cpu()))

    prompt, out = first
    print(f"\nfirst request ({len(prompt)} prompt tokens): top {min(5, args.num_beams)} identifiers")
    for k in range(min(5, args.num_beams)):
        if bool(out.valid[0, k]):
            print(f"  {k + 1}. tokens {out.sequences[0, k].tolist()}  log-prob {float(out.scores[0, k]):8.3f}  "
                  f"items {out.item_ids[0][k]}")
    ours = statistics.median(ours_ms)
    print("\n| decoder | ms per request (median over batches) | speedup |")
    print("|---|---|---|")
    if hf_ms:
        hf = statistics.median(hf_ms)
        print(f"| Hugging Face generate + trie hook | {hf:.2f} | 1.00x |")
        print(f"| atspeed_ext BeamSearchDecoder | {ours:.2f} | {hf / ours:.2f}x |")
        print(f"\nidentical beams in {len(batches) - mismatches} of {len(batches)} batches")
        if mismatches:
            print("warning: some batches differ from Hugging Face generate (near-tied scores?)")
    else:
        print(f"| atspeed_ext BeamSearchDecoder | {ours:.2f} | - |")
    return 0
