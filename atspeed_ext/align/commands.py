"""The ``teacher`` and ``train-draft`` commands."""

from __future__ import annotations

import os
from pathlib import Path

from ..commands import (cache_dir, check_beams_fit, check_history_length, check_same_prompts, data_of, device_of,
                        prepare_output, run_of, train_config, warn_eos_mismatch, writable_folder)
from ..models import build_model, load_checkpoint
from ..train import run_summary
from .levels import LevelView
from .teacher import TeacherData, delete_teacher_data, generate_teacher_data
from .trainer import ON_POLICY_OBJECTIVES, AlignConfig, needs_teacher, train_draft


#: Why a target trained with <eos> deserves a warning in teacher and train-draft (which refuse --with-eos).
_EOS_NOT_ALIGNED = ("teacher data and draft alignment cover the identifier tokens only, so the draft will not "
                    "learn the <eos> level this target decodes with (speculative decoding stays lossless; only "
                    "the <eos> level's acceptance suffers)")


def run_teacher(args) -> int:
    data = data_of(args)
    if args.with_eos:
        raise ValueError("teacher data covers identifier tokens only; drop --with-eos")
    device = device_of(args)
    target, tokenizer = load_checkpoint(args.checkpoint, device, identifiers=data.identifiers)
    warn_eos_mismatch(args.checkpoint, False, "--checkpoint", _EOS_NOT_ALIGNED)
    check_beams_fit(data, args.num_beams, "--num-beams")
    check_history_length(args.checkpoint, data)
    examples = data.train_examples()
    if args.limit > 0:
        examples = examples[:args.limit]
    out = Path(args.out) if args.out else \
        cache_dir() / f"{data.name}-teacher-{run_of(args.checkpoint)}-k{args.num_beams}"
    writable_folder(out, "--out")
    if args.overwrite:
        deleted = delete_teacher_data(out)
        if deleted:
            print(f"--overwrite: deleted the teacher data in {out} ({len(deleted)} files)")
    print(f"teacher data: {len(examples)} training prompts, K={args.num_beams}, target {args.checkpoint} -> {out}")
    generate_teacher_data(target, tokenizer, examples, out, num_beams=args.num_beams, batch_size=args.batch_size,
                          shard_size=args.shard_size,
                          source={"data": args.data or "synthetic", "target": str(Path(args.checkpoint).resolve())})
    meta = TeacherData(out, LevelView(tokenizer.trie(), tokenizer.item_token_ids)).meta
    if "seconds_last_run" not in meta:
        print(f"{out} already held this teacher data, complete: nothing to compute")
    print(f"done: {meta['bytes'] / 1e6:.1f} MB in {len(meta['shards'])} shards"
          + (f", {meta['seconds_last_run']:.0f} s" if "seconds_last_run" in meta else ""))
    return 0


def run_train_draft(args) -> int:
    from ..cli import validates

    validation = dict(val_beams=args.val_beams, val_draft_beams=args.val_draft_beams, val_gamma=args.val_gamma)
    if args.val_draft_beams < args.val_beams:
        if validates(args):  # before the data and the models load
            raise SystemExit(f"error: --val-draft-beams (N = {args.val_draft_beams}) must be >= --val-beams "
                             f"(K = {args.val_beams})")
        validation = {}  # ignored without validation (and warned about): the defaults, which AlignConfig accepts
    data = data_of(args)
    device = device_of(args)
    align = AlignConfig(objective=args.objective, alpha=args.alpha, temperature=args.temperature, topk=args.topk,
                        on_policy=args.on_policy, on_policy_beams=args.on_policy_beams, **validation)
    cfg = train_config(args)
    target, tokenizer = load_checkpoint(args.target, device, identifiers=data.identifiers)
    target.requires_grad_(False)
    warn_eos_mismatch(args.target, False, "--target", _EOS_NOT_ALIGNED)
    check_history_length(args.target, data)
    if needs_teacher(align) and not args.teacher:
        on_policy = " or --on-policy" if args.objective in ON_POLICY_OBJECTIVES else ""
        raise SystemExit(f"error: --objective {args.objective} needs --teacher DIR (see `atspeed-ext teacher`)"
                         f"{on_policy}")
    teacher = None
    if args.teacher:  # also restricts ce / on-policy training to the prompts it covers
        teacher = TeacherData(args.teacher, LevelView(tokenizer.trie(), tokenizer.item_token_ids), data.identifiers)
    if args.init:
        draft, draft_tokenizer = load_checkpoint(args.init, device, identifiers=data.identifiers)
        check_same_prompts(tokenizer, draft_tokenizer, data.num_items, f"--init {args.init}", f"--target {args.target}")
    else:
        draft = build_model(args.preset, tokenizer.vocab_size, seed=args.seed).to(device)
    start = args.preset if not args.init else run_of(args.init).removeprefix(f"{data.name}-")
    name = f"{start}-{args.objective}" + ("-onpolicy" if args.on_policy else "")
    kind = "" if name.startswith("draft") else "draft-"  # "draft-1x128-ce", not "draft-draft-1x128-ce"
    out = Path(args.out) if args.out else cache_dir() / f"{data.name}-{kind}{name}"
    if args.init and Path(args.init).resolve() in (out.resolve(), out.resolve() / "best", out.resolve() / "last"):
        raise SystemExit(f"error: --out {out} would overwrite the checkpoint --init {args.init} starts from; "
                         "give another --out")
    prepare_output(out, args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"training draft {name} on {data.name} with target {args.target}; checkpoints in {out}")
    state = train_draft(draft, target, tokenizer, data, out, cfg, align, teacher=teacher, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # only rank 0 validates (torchrun)
        print(f"done: {run_summary(state)} (accepted levels per round); best model in {out / 'best'}")
    return 0
