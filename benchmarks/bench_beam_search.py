"""BeamSearchDecoder against Hugging Face ``generate`` with a trie hook, same model, side by side.

Default setting (issue 2): a LLaMA with 8 layers / hidden 512 (random weights), 80-token prompts, a
12,000-item L=4 trie, batch 1 and 16, K in {1, 5, 10, 20}. Prints a table and writes
benchmarks/results/beam_search_<device>.{json,md}. Both decoders are checked to return the same beams.

    python benchmarks/bench_beam_search.py [--device cuda] [--reps 5] [--beams 1 5 10 20] [--batches 1 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from atspeed_ext import BeamSearchDecoder, ItemTrie  # noqa: E402
from atspeed_ext.hf import hf_constrained_beam_search  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--beams", type=common.positive, nargs="+", default=[1, 5, 10, 20])
    p.add_argument("--batches", type=common.positive, nargs="+", default=[1, 16])
    p.add_argument("--reps", type=common.positive, default=5, help="timed repetitions per point (median reported)")
    p.add_argument("--hf-reps-large", type=common.positive, default=2, help="repetitions for HF at batch > 1 (slow)")
    p.add_argument("--layers", type=common.positive, default=8)
    p.add_argument("--hidden", type=common.positive, default=512)
    p.add_argument("--prompt-length", type=common.positive, default=80)
    p.add_argument("--items", type=common.positive, default=12000)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--name", type=common.results_name, default=None,
                   help="results file name (default beam_search_<device>)")
    args = p.parse_args(argv)

    device = common.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = common.llama(args.layers, args.hidden, dtype=dtype).to(device)
    trie = ItemTrie(common.catalogue(args.items))
    vocab = model.config.vocab_size
    rows = []
    for batch in args.batches:
        ids = common.prompts(batch, args.prompt_length, vocab).to(device)
        mask = torch.ones_like(ids)
        for K in args.beams:
            dec = BeamSearchDecoder(model, trie, num_beams=K)
            ours = dec.generate(ids, mask)
            hf = hf_constrained_beam_search(model, trie, ids, mask, K)
            same = bool(torch.equal(ours.sequences.cpu(), hf.sequences.cpu()))
            ours_ms = common.median_ms(lambda: dec.generate(ids, mask), args.reps)
            hf_ms = common.median_ms(lambda: hf_constrained_beam_search(model, trie, ids, mask, K),
                                     args.reps if batch == 1 else args.hf_reps_large)
            row = {"batch": batch, "K": K, "hf_ms": hf_ms, "ours_ms": ours_ms, "speedup": hf_ms / ours_ms,
                   "same_beams": same}
            rows.append(row)
            print(f"batch {batch:3d}  K {K:3d}  HF {hf_ms:9.1f} ms  ours {ours_ms:8.1f} ms  "
                  f"speedup {hf_ms / ours_ms:5.2f}x  same beams: {same}", flush=True)
    header = {"command": "python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:] if argv is None else argv),
              "model": f"LLaMA {args.layers} layers, hidden {args.hidden}, vocab {vocab}, {args.dtype}, random weights",
              "trie": f"{args.items} items, L=4, 256 codes per level", "prompt_length": args.prompt_length,
              "reps": args.reps, "hf_reps_batch_gt_1": args.hf_reps_large}
    md = common.write_results(args.name or f"beam_search_{device.type}", header, rows,
                              ["batch", "K", "hf_ms", "ours_ms", "speedup", "same_beams"])
    print(f"\nwrote {md}")


if __name__ == "__main__":
    main()
