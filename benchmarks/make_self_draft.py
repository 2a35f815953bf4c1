"""A draft made of the target's own first layers: its embeddings, its first n decoder layers, its final norm and head.

The layers after the n-th are dropped; nothing is retrained here. Fine-tune the result as a draft with
``atspeed-ext train-draft --init OUT ...`` (any objective), then benchmark it like any draft. This is the
"self-draft" experiment of the README: does a draft that starts from the target's own representation agree
with the target more than a small draft trained from scratch?

    python benchmarks/make_self_draft.py --target TARGET/best --layers 2 --out DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# What a checkpoint folder holds besides its weights and config; copied unchanged (items.json is the tokenizer).
CHECKPOINT_FILES = ("items.json", "generation_config.json")


def layer_index(key: str) -> int | None:
    """The decoder layer a LLaMA / Qwen2 state-dict key belongs to (``model.layers.<i>.``), else None."""
    parts = key.split(".")
    if len(parts) > 2 and parts[0] == "model" and parts[1] == "layers":
        return int(parts[2])
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="target checkpoint directory")
    parser.add_argument("--layers", type=common.positive, required=True, help="decoder layers kept (the first n)")
    parser.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
    args = parser.parse_args()
    target, out = Path(args.target).expanduser(), Path(args.out).expanduser()
    config = json.loads((target / "config.json").read_text())
    if args.layers >= config["num_hidden_layers"]:
        parser.error(f"--layers {args.layers}: the target has {config['num_hidden_layers']} layers; keep fewer")
    if out.exists():
        parser.error(f"--out {out} exists; give a new folder")
    state = load_file(target / "model.safetensors")
    kept = {k: v for k, v in state.items() if (layer_index(k) is None or layer_index(k) < args.layers)}
    out.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        if (target / name).exists():
            shutil.copy(target / name, out / name)
    config["num_hidden_layers"] = args.layers
    for per_layer in ("layer_types",):  # per-layer lists (transformers 5) must match the new depth
        if isinstance(config.get(per_layer), list):
            config[per_layer] = config[per_layer][:args.layers]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(kept, str(out / "model.safetensors"), metadata={"format": "pt"})
    meta = json.loads((target / "meta.json").read_text()) if (target / "meta.json").exists() else {}
    meta = {k: meta[k] for k in ("with_eos", "max_history") if k in meta}  # how its prompts and items are spelled
    meta.update(step=0, self_draft_of=str(target.resolve()), layers=args.layers)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{out}: layers 0..{args.layers - 1} of {target} ({len(kept)} of {len(state)} tensors)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
