"""Peak memory of one decode with a realistic vocabulary: what a `generate` call adds above the models.

Each configuration runs in a fresh process (the peak resident size, `ru_maxrss`, only grows), on tiny random
LLaMA models (2 layers for the target, 1 for the draft, hidden 64) whose vocabulary V is a real tokenizer's,
so that the logits, B x rows x V floats per model call, are what a decode holds. `logits_mb` is the target's
largest call, float32: K rows per request for beam search; for speculation, the first round's prompt position
and full tree (1 + N x min(gamma, depth - 1) rows) or a later round's K pending beams and tree.

    python benchmarks/peak_memory.py [--name peak_memory_cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# decoder, batch, vocabulary, K, N, gamma (V: LLaMA 2's 32,000 and Qwen2's 151,936 tokens)
CONFIGS = [
    ("beam", 64, 32000, 10, 0, 0),
    ("beam", 256, 32000, 50, 0, 0),
    ("strict", 64, 32000, 10, 40, 2),
    ("strict", 16, 151936, 50, 100, 3),
    ("relaxed", 32, 32000, 10, 100, 2),
    ("exact", 32, 32000, 10, 100, 2),
]
COLUMNS = ["decoder", "batch", "vocab", "K", "N", "gamma", "logits_mb", "peak_above_models_mb", "seconds"]


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_one(decoder: str, B: int, V: int, K: int, N: int, gamma: int) -> dict:
    """Build the models, trie and prompts, then decode once; the peak is measured above what they take."""
    from atspeed_ext import BeamSearchDecoder, ItemTrie, SpecBeamDecoder

    torch.set_num_threads(1)
    trie = ItemTrie(common.catalogue(100_000, depth=4, codes=128), vocab_size=V)
    target = common.llama(layers=2, hidden=64, vocab_size=V, seed=0)
    prompts = common.prompts(B, 20, V)
    if decoder == "beam":
        dec = BeamSearchDecoder(target, trie, K)
        rows = K
    else:
        draft = common.llama(layers=1, hidden=64, vocab_size=V, seed=1)
        seed = {} if decoder == "strict" else {"seed": 0}
        dec = SpecBeamDecoder(target, draft, trie, K, N, gamma, verification=decoder, **seed)
        # round 1: the prompt's last position and a full tree; later rounds: K pending beams and a tree of at
        # most depth - 2 levels
        rows = max(1 + N * min(gamma, trie.depth - 1), K + N * min(gamma, trie.depth - 2))
    before = resident_mb()
    start = time.perf_counter()
    dec.generate(prompts)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux
    return {"decoder": decoder, "batch": B, "vocab": V, "K": K, "N": N or "-", "gamma": gamma or "-",
            "logits_mb": round(B * rows * V * 4 / 2**20), "peak_above_models_mb": round(peak - before),
            "seconds": round(seconds, 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", type=common.results_name, default="peak_memory_cpu", help="results file name")
    p.add_argument("--one", help=argparse.SUPPRESS)   # internal: one configuration, in this process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(*json.loads(args.one))))
        return
    rows = []
    for config in CONFIGS:
        done = subprocess.run([sys.executable, __file__, "--one", json.dumps(config)], capture_output=True,
                              text=True)
        if done.returncode:
            raise SystemExit(f"error: configuration {config} failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(" ".join(f"{c}={rows[-1][c]}" for c in COLUMNS), flush=True)
    md = common.write_results(args.name, {"command": "python benchmarks/peak_memory.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "threads": 1, "models": "random LLaMA, hidden 64, float32",
        "trie": "100,000 items, 4 levels of 128 codes", "prompts": "20 tokens"}, rows, COLUMNS)
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
