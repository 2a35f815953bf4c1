"""Would a larger target make speculation pay on this machine? Target-call costs by model size.

Speculation trades target calls for tree tokens. It pays where one more token in a call costs little next to the
call itself, i.e. where a call is bound by streaming the weights rather than by arithmetic. This times, for random
LLaMAs of growing size (bfloat16 by default, batch 1, a prompt of --prompt-length tokens):

1. ``feed M / feed K``: a ``TreeKV.feed`` of M tree tokens over the cached prompt, relative to one of K tokens
   (beam search's step);
2. ``bound``: beam search's four calls on a depth-4 trie (the prompt, then K tokens three times) over gamma = 1
   speculation's two (the prompt with N tree nodes; K + N nodes), the median over --reps pairs timed back to back.
   This is the speedup of a **free draft that is always accepted at width N**: an upper bound, as in
   ``spec_cost_model.py`` but without a trained draft's coverage, so any target size can be tried.

    python benchmarks/forward_cost.py [--sizes 8x512 8x1024 16x1024 12x2048] [--beams 10] [--widths 10 20 30 40]
        [--prompt-length 40] [--reps 7] [--dtype bfloat16] [--name NAME]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from atspeed_ext.tree_kv import ROOT, TreeKV  # noqa: E402


def model_size(text: str) -> tuple[int, int]:
    """An argparse type for ``LAYERSxHIDDEN`` (hidden a multiple of 64: heads of 64)."""
    try:
        layers, hidden = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be LAYERSxHIDDEN such as 8x512, got {text!r}") from None
    if layers < 1 or hidden < 64 or hidden % 64:
        raise argparse.ArgumentTypeError(f"needs layers >= 1 and hidden a multiple of 64, got {text!r}")
    return layers, hidden


class Calls:
    """The target calls of both decoders for one prompt, on one ``TreeKV`` (tree slots dropped after each)."""

    def __init__(self, model, prompt_length: int):
        self.kv = TreeKV(model)
        self.ids = common.prompts(1, prompt_length, model.config.vocab_size)
        self.mask = torch.ones_like(self.ids)
        self.vocab = model.config.vocab_size

    def tokens(self, n: int) -> torch.Tensor:
        return torch.randint(common.SPECIAL, self.vocab, (1, n))

    def prefill(self, tree: int = 0) -> None:
        if tree:
            self.kv.prefill(self.ids, self.mask, self.tokens(tree), torch.full((1, tree), ROOT))
        else:
            self.kv.prefill(self.ids, self.mask)

    def drop_tree(self) -> None:
        """Back to the prompt alone (no anchors: every tree slot goes)."""
        self.kv.compact(torch.full((1, 1), ROOT))

    def feed(self, n: int) -> None:
        """One call scoring n new tree nodes hanging off the prompt, then back to the prompt alone."""
        self.kv.feed(self.tokens(n), torch.full((1, n), ROOT))
        self.drop_tree()

    def beam_search(self, K: int) -> None:
        self.prefill()
        for _ in range(3):
            self.feed(K)

    def speculative(self, K: int, N: int) -> None:
        self.prefill(N)
        self.drop_tree()
        self.feed(K + N)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=model_size, nargs="+", default=[(8, 512), (8, 1024), (16, 1024), (12, 2048)],
                   help="target sizes, LAYERSxHIDDEN (default 8x512 8x1024 16x1024 12x2048)")
    p.add_argument("--beams", type=common.positive, default=10, help="K (default 10)")
    p.add_argument("--widths", type=common.positive, nargs="+", default=[10, 20, 30, 40], help="N (default 10-40)")
    p.add_argument("--prompt-length", type=common.positive, default=40,
                   help="(default 40; Beauty test prompts: median 30, mean 38 tokens)")
    p.add_argument("--vocab-size", type=common.positive, default=863, help="(default 863, the Beauty trie's)")
    p.add_argument("--reps", type=common.positive, default=7)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--name", type=common.results_name, default="forward_cost_cpu")
    args = p.parse_args(argv)
    K, dtype = args.beams, getattr(torch, args.dtype)
    rows = []
    with torch.inference_mode():
        for layers, hidden in args.sizes:
            model = common.llama(layers, hidden, args.vocab_size, dtype=dtype)
            params = sum(t.numel() for t in model.parameters()) / 1e6
            calls = Calls(model, args.prompt_length)
            calls.prefill()
            feed_k = common.median_ms(lambda: calls.feed(K), args.reps, warmup=2)
            for N in args.widths:
                feed_n = common.median_ms(lambda: calls.feed(N), args.reps, warmup=2)
                ratios = []
                for _ in range(args.reps):
                    base = common.median_ms(lambda: calls.beam_search(K), 1, warmup=0)  # one timed call each
                    ratios.append(base / common.median_ms(lambda: calls.speculative(K, N), 1, warmup=0))
                rows.append({"size": f"{layers}x{hidden}", "params_M": round(params, 1), "K": K, "N": N,
                             "feed_K_ms": feed_k, "feed_N_ms": feed_n, "feed_N_over_K": feed_n / feed_k,
                             "bound": statistics.median(ratios)})
                print(rows[-1], flush=True)
            model = calls = None  # free this size before building the next
    header = {"command": "python benchmarks/forward_cost.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "threads": torch.get_num_threads(), "dtype": args.dtype, "prompt_length": args.prompt_length,
              "note": "random weights; feed_*: one TreeKV.feed of K or N tree tokens over the cached prompt; bound: "
                      "beam search's 4 target calls over gamma = 1 speculation's 2 (prompt + N nodes; K + N nodes), "
                      "a free draft always accepted at width N (median of back-to-back pairs)"}
    md = common.write_results(args.name, header, rows,
                              ["size", "params_M", "K", "N", "feed_K_ms", "feed_N_ms", "feed_N_over_K", "bound"])
    print(md.read_text())


if __name__ == "__main__":
    main()
