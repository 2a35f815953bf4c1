"""ItemTrie construction time (C++ builder) for catalogues of 12k to 1M items, L=4, on one core.

    python benchmarks/bench_trie.py [--sizes 12000 100000 1000000] [--reps 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from atspeed_ext import ItemTrie  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=common.positive, nargs="+", default=[12000, 100000, 1000000])
    p.add_argument("--reps", type=common.positive, default=3)
    p.add_argument("--name", type=common.results_name, default="trie_build", help="results file name")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for n in args.sizes:
        ids = common.catalogue(n, depth=4, codes=256)
        ms = common.median_ms(lambda: ItemTrie(ids), args.reps)
        trie = ItemTrie(ids)
        rows.append({"items": n, "build_ms": ms, "nodes": trie.num_nodes})
        print(f"{n:>9d} items  {ms:8.1f} ms  {trie.num_nodes} nodes", flush=True)
    md = common.write_results(args.name, {"command": "python benchmarks/bench_trie.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "threads": 1}, rows, ["items", "build_ms", "nodes"])
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
