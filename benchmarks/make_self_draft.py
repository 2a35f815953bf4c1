"""A draft made of the target's own first layers: its embeddings, its first n decoder layers, its final norm and head.

The layers after the n-th are dropped; nothing is retrained here. Fine-tune the result as a draft with
``atspeed-ext train-draft --init OUT ...`` (any objective), then benchmark it like any draft. This is the
"self-draft" experiment of the README: does a draft that starts from the target's own representation agree
with the target more than a small draft trained from scratch?

The target is read and the draft written by the package's own checkpoint functions, so identifier and
text-prompt checkpoints (their tokenizer files), tied heads and sharded weights all carry over.

    python benchmarks/make_self_draft.py --target TARGET/best --layers 2 --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from atspeed_ext.models import checkpoint_meta, load_checkpoint, save_checkpoint  # noqa: E402


def keep_first_layers(model, n: int) -> None:
    """Drop every decoder layer after the first ``n`` of a LLaMA / Qwen2-style causal LM, config included."""
    layers = model.model.layers
    if not 1 <= n < len(layers):
        raise ValueError(f"keep 1 to {len(layers) - 1} of the model's {len(layers)} layers, not {n}")
    model.model.layers = torch.nn.ModuleList(list(layers)[:n])
    model.config.num_hidden_layers = n
    if isinstance(getattr(model.config, "layer_types", None), list):  # per-layer attention kinds (transformers 5)
        model.config.layer_types = model.config.layer_types[:n]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="target checkpoint directory")
    parser.add_argument("--layers", type=common.positive, required=True, help="decoder layers kept (the first n)")
    parser.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
    args = parser.parse_args(argv)
    target, out = Path(args.target).expanduser(), Path(args.out).expanduser()
    if out.exists():
        parser.error(f"--out {out} exists; give a new folder")
    model, tokenizer = load_checkpoint(target)
    try:
        keep_first_layers(model, args.layers)
    except ValueError as e:
        parser.error(f"--layers {args.layers}: {e}")
    meta = {k: v for k, v in checkpoint_meta(target).items() if k in ("with_eos", "max_history")}
    save_checkpoint(out, model, tokenizer, {**meta, "step": 0, "self_draft_of": str(target.resolve()),
                                            "layers": args.layers})
    print(f"{out}: the first {args.layers} layers of {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
