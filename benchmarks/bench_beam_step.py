"""trie_beam_step kernel vs its pure-PyTorch reference, per device (microseconds per call, median).

Shapes follow decoding: B requests of W beams over a vocabulary V with a 12,000-item L=4 trie,
beams sitting at random depth-1 and depth-2 nodes (node ids below level_offsets[3]; almost all of them depth 2).

    python benchmarks/bench_beam_step.py [--device cuda] [--reps 50]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from atspeed_ext import ItemTrie, _ops, reference  # noqa: E402

SHAPES = [(1, 10, 1027, 10), (1, 20, 1027, 20), (16, 10, 1027, 10), (16, 20, 1027, 20), (1, 40, 32000, 40),
          (16, 40, 32000, 40)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=common.positive, default=50)
    p.add_argument("--reference-reps", type=common.positive, default=3)
    p.add_argument("--name", type=common.results_name, default=None,
                   help="results file name (default beam_step_<device>)")
    args = p.parse_args(argv)
    device = common.device(args.device)
    trie = ItemTrie(common.catalogue(12000)).to(device)
    g = torch.Generator().manual_seed(0)
    rows = []
    for B, W, V, num_out in SHAPES:
        logits = torch.randn(B, W, V, generator=g).to(device)
        scores = torch.zeros(B, W, device=device)
        nodes = torch.randint(1, int(trie.level_offsets[3]), (B, W), generator=g).to(device)
        live = torch.ones(B, W, dtype=torch.bool, device=device)
        run = (logits, scores, nodes, live, trie.child_offsets, trie.child_tokens, num_out)
        op_us = common.median_ms(lambda: _ops.trie_beam_step(*run), args.reps, warmup=5) * 1e3
        ref_us = common.median_ms(lambda: reference.trie_beam_step(*run), args.reference_reps) * 1e3
        rows.append({"B": B, "W": W, "V": V, "W_out": num_out, "op_us": op_us, "reference_us": ref_us,
                     "op_vs_reference": ref_us / op_us})
        print(f"B {B:3d} W {W:3d} V {V:6d} W_out {num_out:3d}: op {op_us:9.1f} us  reference {ref_us:10.1f} us  "
              f"({ref_us / op_us:.0f}x)", flush=True)
    md = common.write_results(args.name or f"beam_step_{device.type}", {"command": "python benchmarks/bench_beam_step.py " + " ".join(
        sys.argv[1:] if argv is None else argv)}, rows, ["B", "W", "V", "W_out", "op_us", "reference_us", "op_vs_reference"])
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
