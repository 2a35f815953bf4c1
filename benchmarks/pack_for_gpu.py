"""Pack what benchmarks/gpu_check.sh needs on a machine without the data or the trained models.

Copies the Beauty files and the spec benchmarks' cached checkpoints (the target with its weights in bfloat16:
53 MB instead of 106 MB; the benchmarks cast them back to their --dtype) into one folder, and prints the
variables that point gpu_check.sh at it:

    python benchmarks/pack_for_gpu.py --out .devcarry --target TARGET/best --draft DRAFT/best
        [--aligned-draft ALIGNED/best] [--data ../shared/data/beauty]

TARGET is the trained target (e.g. the README's final recipe: the dropout run + ``--valid-only``), DRAFT the
cross-entropy draft-1x128 given the same fine-tune, ALIGNED an optional AtSpeed-S draft (the best K = 10 draft on
the CPU).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def copy_checkpoint(src: Path, dst: Path, dtype: torch.dtype | None) -> None:
    """Copy a checkpoint folder (main() has checked that it holds weights), its weights cast to ``dtype``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():  # config, tokenizer, meta...: everything but the weights, as they are
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy2(f, dst / f.name)
    weights = load_file(str(src / "model.safetensors"))
    if dtype is not None:
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    save_file({k: v.contiguous() for k, v in weights.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to fill (carry it to the GPU machine)")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "beauty"),
                   help="LC-Rec data to copy (default ../shared/data/beauty next to the repository)")
    p.add_argument("--target", required=True, help="the target checkpoint folder (e.g. RUN/best)")
    p.add_argument("--draft", required=True, help="the cross-entropy draft checkpoint folder")
    p.add_argument("--aligned-draft", default=None, help="an aligned draft checkpoint folder, packed too (optional)")
    args = p.parse_args(argv)
    out, data = Path(args.out), Path(args.data)
    if not data.is_dir():
        raise SystemExit(f"error: --data {data} is not a directory")
    checkpoints = [("--target", args.target), ("--draft", args.draft)]
    if args.aligned_draft:
        checkpoints.append(("--aligned-draft", args.aligned_draft))
    for name, src in checkpoints:  # before anything is copied
        if not (Path(src).expanduser() / "model.safetensors").exists():
            raise SystemExit(f"error: {name} {src} holds no model.safetensors")
    shutil.copytree(data, out / "beauty", dirs_exist_ok=True)
    copy_checkpoint(Path(args.target).expanduser(), out / "target", torch.bfloat16)
    copy_checkpoint(Path(args.draft).expanduser(), out / "draft", None)
    variables = f"ATSPEED_BEAUTY={out}/beauty ATSPEED_TARGET={out}/target ATSPEED_DRAFT={out}/draft"
    if args.aligned_draft:
        copy_checkpoint(Path(args.aligned_draft).expanduser(), out / "aligned-draft", None)
        variables += f" ATSPEED_ALIGNED_DRAFT={out}/aligned-draft"
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2 ** 20
    print(f"packed {size:.0f} MiB into {out}; on the GPU machine:\n{variables} bash benchmarks/gpu_check.sh")


if __name__ == "__main__":
    main()
