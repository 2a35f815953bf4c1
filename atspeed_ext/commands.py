"""The ``train-target`` and ``eval`` commands."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from .data import load_lcrec
from .evaluate import Speculation, evaluate_model, evaluate_popularity, evaluate_speculative
from .machine import machine_name
from .models import build_model, checkpoint_meta, hash_model, load_checkpoint, trained_on_valid
from .synthetic import synthetic_recdata
from .tokenizer import CodeTokenizer
from .train import TrainConfig, run_summary, train_next_item, training_examples


def cache_dir() -> Path:
    """Where trained models are kept by default: $ATSPEED_CACHE or ~/.cache/atspeed_ext."""
    return Path(os.environ.get("ATSPEED_CACHE", Path.home() / ".cache" / "atspeed_ext")).expanduser()


def trained_recipe(preset: str, data, tokenizer: CodeTokenizer, stages, device, tag: str):
    """A model of ``preset`` trained by each :class:`TrainConfig` of ``stages`` in turn, the first from scratch
    (seeded by its ``seed``), each later one from the previous stage's ``best`` checkpoint (e.g. a
    ``valid_only`` recency fine-tune). Stage i is cached in ``<cache>/<tag>-<preset>-s<i>-<digest>``, the digest
    naming the data's contents and the settings of stages 1..i: a finished stage is never trained again, recipes
    with the same first stages share them, and a changed stage or other data never reuse another's results. A
    stage counts as finished once its training returned (``recipe.json`` written); an interrupted one resumes."""
    if not stages:
        raise ValueError("trained_recipe needs at least one training stage")
    settings = [data.fingerprint()] + [dataclasses.asdict(cfg) for cfg in stages]
    previous = None
    for i, cfg in enumerate(stages, 1):
        digest = hashlib.sha256(json.dumps(settings[:i + 1], sort_keys=True).encode()).hexdigest()[:10]
        out = cache_dir() / f"{tag}-{preset}-s{i}-{digest}"
        if (out / "recipe.json").exists():
            print(f"{preset}: stage {i}/{len(stages)} from the cache ({out / 'best'})")
        else:
            model = (build_model(preset, tokenizer.vocab_size, seed=cfg.seed).to(device) if previous is None
                     else load_checkpoint(previous, device)[0])
            print(f"{preset}: training stage {i}/{len(stages)} on {data.name} ({cfg.epochs} epochs"
                  f"{', validation items only' if cfg.valid_only else ''}) -> {out}")
            train_next_item(model, tokenizer, data, out, cfg, resume=True)  # an interrupted stage goes on
            (out / "recipe.json").write_text(json.dumps(settings[:i + 1], indent=2) + "\n")
        previous = out / "best"
    return load_checkpoint(previous, device)[0]


def check_beams_fit(data, k: int, option: str) -> None:
    """Refuse K beams (or a top-K list) longer than the catalogue's distinct identifiers: beam search could
    never fill them, and ``eval --ks 20000`` ran out of memory trying."""
    identifiers = len(set(data.identifiers))
    if k > identifiers:
        raise ValueError(f"{option} {k} is more than the {identifiers} distinct item identifiers of {data.name}; "
                         f"give K <= {identifiers}")


def split_prompts(data, split: str, purpose: str) -> list:
    """The test or validation prompts of ``data``; an error when there are none (nothing to ``purpose``)."""
    prompts = data.test_prompts() if split == "test" else data.valid_prompts()
    if not prompts:
        raise SystemExit(f"error: no user of {data.name} has a {split} item (sequential_{split}.txt missing or "
                         f"empty?): nothing to {purpose}")
    return prompts


def check_history_length(checkpoint: str, data) -> None:
    """Warn when the history length of the prompts differs from the one the checkpoint was trained with (its
    meta.json records it; --max-history defaults to 20 whatever the model saw)."""
    trained = checkpoint_meta(checkpoint).get("max_history")
    if trained is not None and trained != data.max_history:
        print(f"warning: {checkpoint} was trained on histories of at most {trained} items but these prompts take "
              f"up to {data.max_history} (--max-history {trained} to match)", file=sys.stderr)


def warn_eos_mismatch(checkpoint: str, with_eos: bool, role: str, consequence: str) -> None:
    """Warn when ``checkpoint`` was trained with (or without) ``<eos>`` ending its identifiers and is used the
    other way (its meta.json records it; checkpoints without the record are not checked)."""
    trained = checkpoint_meta(checkpoint).get("with_eos")
    if trained is not None and trained != with_eos:
        print(f"warning: {role} {checkpoint} was trained {'with' if trained else 'without'} <eos> ending its "
              f"identifiers, but {'with' if with_eos else 'without'} here: {consequence}", file=sys.stderr)


def check_same_prompts(target_tokenizer, draft_tokenizer, num_items: int, draft_name: str, target_name: str) -> None:
    """A draft is trained on, and decodes, the token ids of the target's tokenizer: refuse one whose own tokenizer
    spells prompts or items otherwise (an identifier model against a text-prompt LLM, two LLM families)."""
    history = list(range(min(3, num_items)))
    if (not torch.equal(draft_tokenizer.item_token_ids, target_tokenizer.item_token_ids)
            or draft_tokenizer.encode_prompt(history) != target_tokenizer.encode_prompt(history)):
        raise ValueError(f"{draft_name} tokenizes prompts or items differently from {target_name} "
                         f"({type(draft_tokenizer).__name__} vs {type(target_tokenizer).__name__}): a draft must share "
                         "the target's tokenizer")


def parse_device(name: str | None) -> torch.device:
    """``--device`` as a torch device (default: cuda if available); a clear error for a bad or absent one."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise SystemExit(f"error: --device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device {name} is not supported; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} was given but no CUDA GPU is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SystemExit(f"error: --device {name}: only {torch.cuda.device_count()} CUDA GPUs are visible")
    return device


#: Output folders this process created (:func:`writable_folder`), removed again by the CLI if still empty when its
#: command fails.
_created_folders: list[Path] = []


def forget_created_folders() -> None:
    """Start a command: folders created before it are not its own."""
    _created_folders.clear()


def remove_created_empty_folders() -> None:
    """Remove the output folders this process created that are still empty (a failed command's)."""
    while _created_folders:  # deepest first
        folder = _created_folders.pop()
        try:
            folder.rmdir()  # only if empty
        except OSError:
            pass


def writable_folder(out: Path, option: str) -> None:
    """Create ``out`` (and its parents) and check that files can be written in it, before any work whose results
    would go there (a bad --out used to fail at the first save, after an epoch of training)."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: {option} {out} is a file; give a folder")
    missing = [out]  # out and each missing parent, deepest first
    while not missing[-1].exists():
        missing.append(missing[-1].parent)
    _created_folders.extend(reversed(missing[:-1]))  # removed deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".atspeed-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"error: {option} {out}: cannot write there ({e.strerror or e})") from None


def prepare_output(out: Path, args) -> None:
    """The output folder of a training command, checked writable up front: one that already holds a run is
    refused unless --resume (continue it) or --overwrite (its checkpoints are deleted first, so nothing of the old
    run survives) says what to do with it: a retry must not silently destroy hours of training."""
    writable_folder(out, "--out")
    if args.resume and args.overwrite:
        raise SystemExit("error: give --resume (continue the run in OUT) or --overwrite (replace it), not both")
    held = [name for name in ("best", "last", "best.tmp", "last.tmp") if (out / name).exists()]
    if not held or args.resume:
        return
    if not args.overwrite:
        raise SystemExit(f"error: {out} already holds a run ({' and '.join(held)}/); pass --resume to continue it "
                         "with the same settings, --overwrite to replace it, or another --out")
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: one process deletes
        for name in held:
            shutil.rmtree(out / name)
        print(f"--overwrite: deleted {', '.join(held)} in {out}")


def device_of(args) -> torch.device:
    device = parse_device(args.device)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: processes on this machine
    visible = torch.cuda.device_count() if device.type == "cuda" else 0
    if local_processes <= 1 or visible <= 1:  # one process here, or the launcher gave each process its own GPU
        return device
    if device.index is not None:
        raise SystemExit(f"error: --device {device} would put all {local_processes} torchrun processes of this "
                         "machine on one GPU; pass --device cuda (each process then uses cuda:LOCAL_RANK)")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= visible:
        raise SystemExit(f"error: torchrun started {local_processes} processes on this machine but only {visible} "
                         f"GPUs are visible (LOCAL_RANK {local_rank})")
    return torch.device("cuda", local_rank)


def data_of(args):
    if args.data:
        return load_lcrec(args.data, max_history=args.max_history)
    data = synthetic_recdata(num_users=args.synthetic_users, num_items=args.synthetic_items)
    data.max_history = args.max_history
    return data


def run_train_target(args) -> int:
    data = data_of(args)
    device = device_of(args)
    cfg = train_config(args)
    if cfg.valid_only and not args.init:
        raise SystemExit("error: --valid-only fine-tunes a trained model on the validation items: give --init RUN/best")
    name = run_name(args.preset, args.init, data.name, cfg)
    out = Path(args.out) if args.out else cache_dir() / name
    if args.init and Path(args.init).resolve() in (out.resolve(), out.resolve() / "best", out.resolve() / "last"):
        raise SystemExit(f"error: --out {out} would overwrite the checkpoint --init {args.init} starts from; "
                         "give another --out")
    prepare_output(out, args)
    if args.init:  # one of our checkpoints, or a local HF causal LM + its tokenizer, prompted with text
        model, tokenizer = load_checkpoint(args.init, device, identifiers=data.identifiers)
        warn_eos_mismatch(args.init, args.with_eos, "--init", f"this run trains it "
                          f"{'with' if args.with_eos else 'without'} <eos> (--with-eos)")
    else:
        tokenizer = CodeTokenizer(data.identifiers)
        model = build_model(args.preset, tokenizer.vocab_size, seed=args.seed).to(device)
    examples = len(training_examples(data, cfg))
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: once
        print(f"training {args.preset if not args.init else run_of(args.init)} "
              f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters) on {data.name}: {examples} "
              f"examples, {data.num_items} items, device {device}; checkpoints in {out}")
    state = train_next_item(model, tokenizer, data, out, cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # only rank 0 validates (torchrun)
        print(f"done: {run_summary(state)}; best model in {out / 'best'}")
    return 0


def run_name(preset: str, init: str | None, data_name: str, cfg: TrainConfig) -> str:
    """The default output folder's name: ``<data>-<preset>`` from scratch; from ``--init``, the name of the run it
    starts from (``RUN/best``; ``RUN/last`` adds ``-last``; any other folder its own name) + ``-cont`` (or
    ``-validonly``); ``-trainvalid`` when the validation items are training targets too. Never the name of the
    run it starts from or of the run validated on the same data."""
    if init is None:
        return f"{data_name}-{preset}" + ("-trainvalid" if cfg.train_on_valid else "")
    base = run_of(init).removeprefix(f"{data_name}-")
    suffix = "-validonly" if cfg.valid_only else "-cont" + ("-trainvalid" if cfg.train_on_valid else "")
    return f"{data_name}-{base}{suffix}"


def run_of(checkpoint: str) -> str:
    """The name of the run a checkpoint folder belongs to: ``RUN`` for ``RUN/best``, ``RUN-last`` for
    ``RUN/last``, the folder's own name otherwise."""
    path = Path(checkpoint).resolve()
    if path.name in ("best", "last"):
        return path.parent.name + ("-last" if path.name == "last" else "")
    return path.name


def train_config(args) -> TrainConfig:
    """The TrainConfig of the shared training options (see cli.train_options); ``--history-dropout`` and
    ``--train-on-valid`` / ``--valid-only`` exist for train-target only."""
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       warmup_ratio=args.warmup_ratio, max_grad_norm=args.max_grad_norm, seed=args.seed,
                       eval_every=args.eval_every, eval_prompts=args.eval_prompts, patience=args.patience,
                       with_eos=args.with_eos, max_steps=args.max_steps, precision=args.precision,
                       dropout=args.dropout, history_dropout=getattr(args, "history_dropout", 0.0),
                       train_on_valid=getattr(args, "train_on_valid", False),
                       valid_only=getattr(args, "valid_only", False))


def width_text(draft_beams) -> str:
    """``--draft-beams`` as given: N, or N1,N2,... (one width per trie depth)."""
    return str(draft_beams) if isinstance(draft_beams, int) else ",".join(map(str, draft_beams))


def run_eval(args) -> int:
    repeated = sorted({k for k in args.ks if args.ks.count(k) > 1})
    if repeated:
        raise SystemExit(f"error: --ks gives K = {repeated[0]} more than once; give each K once")
    data = data_of(args)
    device = device_of(args)
    try:
        model, tokenizer = load_checkpoint(args.checkpoint, device, identifiers=data.identifiers)
    except ValueError as e:
        raise SystemExit(f"error: {e} ({args.data or 'the synthetic data'})") from None
    narrowest = min([args.draft_beams] if isinstance(args.draft_beams, int) else args.draft_beams or [0])
    if args.draft and args.draft_beams is not None and narrowest < max(args.ks):  # ignored without --draft
        raise SystemExit(f"error: --draft-beams (N = {width_text(args.draft_beams)}) must be >= every --ks "
                         f"(K = {max(args.ks)})")
    default = (f"eval_{args.split}" + (f"_limit{args.limit}" if args.limit > 0 else "")
               + (f"_spec-{run_of(args.draft)}" if args.draft else "") + ".json")
    out = Path(args.output) if args.output else Path(args.checkpoint) / default  # a --limit run keeps the full one
    if out.is_dir():  # checked before the evaluation, not after it
        raise SystemExit(f"error: --output {out} is a folder; give a file path")
    if not out.parent.is_dir():
        raise SystemExit(f"error: --output {out}: the folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise SystemExit(f"error: --output {out}: cannot write there (give --output elsewhere)")
    meta = checkpoint_meta(args.checkpoint)
    trained_eos = meta.get("with_eos")
    if trained_eos is not None and trained_eos != args.with_eos:
        raise SystemExit(f"error: {args.checkpoint} was trained {'with' if trained_eos else 'without'} <eos> "
                         f"ending its identifiers; evaluate it {'with' if trained_eos else 'without'} --with-eos")
    check_beams_fit(data, max(args.ks), "--ks")
    check_history_length(args.checkpoint, data)
    speculation = None
    if args.draft:
        draft, draft_tokenizer = load_checkpoint(args.draft, device, identifiers=data.identifiers)
        check_same_prompts(tokenizer, draft_tokenizer, data.num_items, f"--draft {args.draft}",
                           f"--checkpoint {args.checkpoint}")
        warn_eos_mismatch(args.draft, args.with_eos, "--draft", "it drafts this trie's levels worse (the lists stay "
                          "beam search's; only the speed-up suffers)")
        speculation = Speculation(draft, args.draft_beams, args.gamma, args.draft_policy)
        drafted_depths = tokenizer.trie(args.with_eos).depth - 1
        if isinstance(args.draft_beams, tuple) and len(args.draft_beams) > drafted_depths:
            raise SystemExit(f"error: --draft-beams {width_text(args.draft_beams)} gives {len(args.draft_beams)} "
                             f"widths, but the identifiers' trie drafts {drafted_depths} depths: give at most "
                             f"{drafted_depths}")
    on_valid = trained_on_valid(args.checkpoint, args.split)
    prompts = split_prompts(data, args.split, "evaluate")
    if args.limit > 0:
        prompts = prompts[:args.limit]
    if speculation is None:
        metrics = evaluate_model(model, tokenizer, prompts, ks=args.ks, batch_size=args.batch_size,
                                 with_eos=args.with_eos, standard_errors=True)
    else:
        metrics, per_k = evaluate_speculative(model, tokenizer, prompts, speculation, ks=args.ks,
                                              batch_size=args.batch_size, with_eos=args.with_eos, standard_errors=True)
    popularity = evaluate_popularity(data, prompts, ks=args.ks, standard_errors=True, include_valid=on_valid)
    report = {"metrics": metrics, "popularity": popularity, "model": str(Path(args.checkpoint).resolve()),
              "model_step": meta.get("step"), "model_weights": hash_model(model),
              "max_history": data.max_history,
              "model_config": {k: getattr(model.config, k) for k in ("num_hidden_layers", "hidden_size", "vocab_size")},
              "data": args.data or "synthetic", "split": args.split, "trained_on_valid": on_valid,
              "prompts": len(prompts), "ks": args.ks,
              "with_eos": args.with_eos, "machine": machine_name(device), "torch": torch.__version__,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if speculation is not None:
        depth = tokenizer.trie(args.with_eos).depth  # beam search's target calls per request
        report["speculative"] = {"draft": str(Path(args.draft).resolve()),
                                 "draft_step": checkpoint_meta(args.draft).get("step"),
                                 "draft_weights": hash_model(speculation.draft), "gamma": args.gamma,
                                 "draft_policy": args.draft_policy, "verification": "strict",
                                 "beam_search_target_calls_per_request": depth,
                                 "per_k": {str(k): v for k, v in per_k.items()}}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| metric | model (± standard error over prompts) | popularity |\n|---|---|---|")
    for k in metrics:
        if not k.endswith("_se"):
            print(f"| {k} | {metrics[k]:.4f} ± {metrics[k + '_se']:.4f} | {popularity[k]:.4f} ± "
                  f"{popularity[k + '_se']:.4f} |")
    if speculation is not None:
        print(f"\nspeculative beam search with {args.draft} (gamma {args.gamma}, {args.draft_policy} policy; "
              f"the lists are beam search's): beam search makes {depth} target calls per request")
        print("| K | N | accepted levels per round | target calls per request | draft calls per request |\n"
              "|---|---|---|---|---|")
        for k, v in per_k.items():
            print(f"| {k} | {width_text(v['draft_beams'])} | {v['accepted_levels_per_round']:.2f} | "
                  f"{v['target_calls_per_request']:.2f} | {v['draft_calls_per_request']:.2f} |")
    print(f"report: {out}")
    return 0
