"""The atspeed-ext command line (also python -m atspeed_ext)."""

from __future__ import annotations

import argparse
import os
import sys

from .align.losses import OBJECTIVES

__all__ = ["main"]


def integer_at_least(low: int):
    """An argparse type: an integer >= ``low`` (argparse names it in its message: "invalid integer >= 1 value")."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


_positive = integer_at_least(1)
_non_negative = integer_at_least(0)
_at_least_two = integer_at_least(2)  # synthetic items: a next item needs another item


def _seed(text: str) -> int:
    """An argparse type: a seed, an integer in [0, 2**63) (the synthetic data's generators take seed + 1 below
    2**64; training itself takes any int)."""
    value = int(text)
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {value}")
    return value


_seed.__name__ = "seed"


def draft_widths(text: str) -> int | tuple[int, ...]:
    """An argparse type for ``--draft-beams``: N, or one width per trie depth ``N1,N2,...`` (a tuple)."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N1,N2,... (integers >= 1), got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"every width must be >= 1, got {text!r}")
    return values[0] if len(values) == 1 else tuple(values)


draft_widths.__name__ = "N or N1,N2,..."


def _float_in(low: float, high: float, low_open: bool, high_open: bool):
    """An argparse type: a float in the given range (NaN never is)."""
    def parse(text: str) -> float:
        value = float(text)
        if not ((low < value if low_open else low <= value) and (value < high if high_open else value <= high)):
            raise argparse.ArgumentTypeError(f"must be in {'(' if low_open else '['}{low:g}, {high:g}"
                                             f"{')' if high_open else ']'}, got {value}")
        return value
    parse.__name__ = "number"
    return parse


def _train_float(name: str):
    """An argparse type: a float in the range TrainConfig allows for ``name`` (checked before data loads)."""
    from .train import FLOAT_RANGES

    low, high, low_open = FLOAT_RANGES[name]
    return _float_in(low, high, low_open, True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atspeed-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the main job: train a small target and draft on synthetic data (or --data "
                                       "DIR) and compare target-only with speculative beam search")
    demo.add_argument("--data", default=None, help="an LC-Rec data directory (default: synthetic data)")
    demo.add_argument("--users", type=_positive, default=2000, help="synthetic users (default 2000)")
    demo.add_argument("--items", type=_at_least_two, default=500, help="synthetic items (default 500)")
    demo.add_argument("--target-preset", default="target-4x256", help="target model preset (default target-4x256)")
    demo.add_argument("--draft-preset", default="tiny-1x64", help="draft model preset (default tiny-1x64)")
    demo.add_argument("--epochs", type=_positive, default=3, help="training epochs of each model (default 3)")
    demo.add_argument("--requests", type=_positive, default=128, help="test prompts decoded (default 128)")
    demo.add_argument("--batch-size", type=_positive, default=1, help="prompts per decode call (default 1)")
    demo.add_argument("--num-beams", type=_positive, default=10, help="K (default 10)")
    demo.add_argument("--draft-beams", type=_positive, default=20, help="N (default 20)")
    demo.add_argument("--gamma", type=_positive, default=3, help="drafted levels per round (default 3)")
    demo.add_argument("--draft-policy", choices=["beam", "anchored"], default="anchored",
                      help="how a level's N nodes are drafted (default anchored)")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    demo.add_argument("--seed", type=_seed, default=0)

    def data_options(p):
        p.add_argument("--data", default=None, help="an LC-Rec data directory (default: the synthetic data set)")
        p.add_argument("--max-history", type=_positive, default=20, help="history items per prompt (default 20)")
        p.add_argument("--synthetic-users", type=_positive, default=2000)
        p.add_argument("--synthetic-items", type=_at_least_two, default=500)
        p.add_argument("--with-eos", action="store_true", help="end identifiers with <eos> (trie depth L + 1)")
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")

    def train_options(p, epochs: int = 10, lr: float = 1e-3, eval_prompts: int = 500):
        p.add_argument("--out", default=None, help="output directory (default: the user cache directory)")
        p.add_argument("--epochs", type=_positive, default=epochs)
        p.add_argument("--batch-size", type=_positive, default=64)
        p.add_argument("--lr", type=_train_float("lr"), default=lr)
        p.add_argument("--weight-decay", type=_train_float("weight_decay"), default=0.01)
        p.add_argument("--warmup-ratio", type=_train_float("warmup_ratio"), default=0.05)
        p.add_argument("--max-grad-norm", type=_train_float("max_grad_norm"), default=1.0)
        p.add_argument("--dropout", type=_train_float("dropout"), default=0.0,
                       help="dropout on the embeddings and residual branches while training (default 0)")
        p.add_argument("--max-steps", type=_non_negative, default=0,
                       help="train for at most this many steps, the learning-rate schedule fitted to them (0: no limit)")
        p.add_argument("--eval-every", type=_non_negative, default=0, help="validate and checkpoint every N steps (0: every epoch; without "
                       "validation it still sets how often last/ is saved)")
        p.add_argument("--eval-prompts", type=_non_negative, default=eval_prompts,
                       help=f"validation prompts used (default {eval_prompts}; 0: no validation, no early "
                            "stopping, every checkpoint is the best)")
        p.add_argument("--patience", type=_positive, default=3, help="validations without improvement before stopping")
        p.add_argument("--seed", type=_seed, default=0)
        p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                       help="bf16: bfloat16 autocast, faster on CPUs with bfloat16 units (AMX, AVX512-BF16) "
                            "and on GPUs (default fp32)")
        p.add_argument("--resume", action="store_true", help="continue from OUT/last if it exists (with the same "
                       "settings: an exact resume)")
        p.add_argument("--overwrite", action="store_true", help="replace the checkpoints already in OUT (without "
                       "it, or --resume, an OUT holding a run is refused)")

    train = sub.add_parser("train-target", help="next-item training of a target LM (safetensors checkpoints)")
    data_options(train)
    train.add_argument("--preset", default="target-8x512", help="model preset (default target-8x512)")
    train.add_argument("--init", default=None, metavar="DIR",
                       help="start from a checkpoint instead of a preset: one of ours (continue training with a "
                            "new schedule) or any local Hugging Face causal LM and its tokenizer (text instruction "
                            "prompts; the codes are added to its vocabulary)")
    train_options(train)
    train.add_argument("--history-dropout", type=_train_float("history_dropout"), default=0.0,
                       help="drop each history item of a training prompt with this probability, keeping at least "
                            "the most recent (augmentation; default 0)")
    train.add_argument("--train-on-valid", action="store_true",
                       help="also train on the validation items (after each user's train items): the final model "
                            "for the test split, with settings chosen on validation earlier; no validation, no "
                            "early stopping, best = last")
    train.add_argument("--valid-only", action="store_true",
                       help="train on the validation items only (implies --train-on-valid): a short recency "
                            "fine-tune of an --init checkpoint on the latest interactions before the test period "
                            "(e.g. 2 epochs at lr 1e-4)")

    ev = sub.add_parser("eval", help="Recall/NDCG@{5,10,20} of a checkpoint (and popularity), as a JSON report")
    data_options(ev)
    ev.add_argument("--checkpoint", required=True, help="a checkpoint directory (e.g. OUT/best)")
    ev.add_argument("--split", choices=["test", "valid"], default="test")
    ev.add_argument("--ks", type=_positive, nargs="+", default=[5, 10, 20])
    ev.add_argument("--limit", type=_non_negative, default=0, help="evaluate the first N prompts only (0: all)")
    ev.add_argument("--batch-size", type=_positive, default=32)
    ev.add_argument("--output", default=None, help="JSON report path (default: CHECKPOINT/eval_<split>.json, with --limit "
                         "CHECKPOINT/eval_<split>_limit<N>.json, with --draft CHECKPOINT/eval_<split>[_limit<N>]_spec-"
                         "<draft>.json)")
    ev.add_argument("--draft", default=None, metavar="DIR",
                    help="decode by speculative beam search with this draft checkpoint (same lists, same metrics); "
                         "the report adds accepted levels per round and target calls per request")
    ev.add_argument("--draft-beams", type=draft_widths, default=None,
                    help="with --draft: N, drafted nodes per level, >= every --ks (default 2K for each K); or one "
                         "width per trie depth, N1,N2,... (the last repeats deeper down)")
    ev.add_argument("--gamma", type=_positive, default=3, help="with --draft: drafted levels per round (default 3)")
    ev.add_argument("--draft-policy", choices=["beam", "anchored"], default="beam",
                    help="with --draft: how a level's N nodes are drafted (default beam)")

    teach = sub.add_parser("teacher", help="teacher data for draft alignment: the target's top-K beams and its "
                                           "log-probabilities along them, for every training prompt")
    data_options(teach)
    teach.add_argument("--checkpoint", required=True, help="the target checkpoint directory")
    teach.add_argument("--num-beams", type=_positive, default=20, help="K beams per prompt (default 20)")
    teach.add_argument("--batch-size", type=_positive, default=64)
    teach.add_argument("--limit", type=_non_negative, default=0, help="the first N training prompts only (0: all)")
    teach.add_argument("--shard-size", type=_positive, default=4096, help="prompts per shard file (default 4096)")
    teach.add_argument("--out", default=None, help="output directory (default: the user cache directory); teacher "
                       "data already there for the same settings is continued shard by shard")
    teach.add_argument("--overwrite", action="store_true", help="delete the teacher data already in OUT first (its "
                       "meta.json and shards; needed when it was made with other settings or another target)")

    draft = sub.add_parser("train-draft", help="train a draft aligned with a target (AtSpeed-S/R or a KD baseline)")
    data_options(draft)
    draft.add_argument("--target", required=True, help="the target checkpoint directory")
    draft.add_argument("--teacher", default=None, help="teacher data directory (needed unless --objective ce "
                       "or --on-policy; when given, training uses only the prompts it covers, whatever the objective)")
    draft.add_argument("--objective", choices=OBJECTIVES, default="atspeed-s")
    draft.add_argument("--preset", default="draft-1x128", help="draft model preset (default draft-1x128)")
    draft.add_argument("--init", default=None, metavar="DIR", help="start from this draft checkpoint instead")
    draft.add_argument("--alpha", type=_float_in(0.0, 1.0, False, False), default=0.7,
                       help="weight of the alignment term, in [0, 1] (default 0.7)")
    draft.add_argument("--temperature", type=_float_in(0.0, float("inf"), True, True), default=1.0,
                       help="softmax temperature of both distributions in the alignment term (default 1)")
    draft.add_argument("--topk", type=_positive, default=20, help="AtSpeed-S: size of the draft's top-K set (default 20)")
    draft.add_argument("--on-policy", action="store_true", help="atspeed-s / atspeed-r along the draft's own beams "
                       "scored by the target (DistillSpec style) instead of the target's beams")
    draft.add_argument("--on-policy-beams", type=_positive, default=20, help="draft beams per prompt (default 20)")
    draft.add_argument("--val-beams", type=_positive, default=10, help="validation K (default 10)")
    draft.add_argument("--val-draft-beams", type=_positive, default=40, help="validation N (default 40)")
    draft.add_argument("--val-gamma", type=_positive, default=3, help="validation gamma (default 3)")
    train_options(draft, epochs=5, lr=3e-3, eval_prompts=200)
    parser.commands = sub.choices  # name -> its parser (for ignored_options)
    return parser


def _trains_on_valid(args) -> bool:
    return getattr(args, "train_on_valid", False) or getattr(args, "valid_only", False)


def validates(args) -> bool:
    """Whether a training command validates (--eval-prompts > 0 and the validation items are not trained on)."""
    return args.eval_prompts > 0 and not _trains_on_valid(args)


_NO_VALIDATION = "without --train-on-valid / --valid-only (they train without validation)"
_VALIDATION = "with validation (--eval-prompts > 0, no --train-on-valid / --valid-only)"
_DATA_COMMANDS = ("train-target", "eval", "teacher", "train-draft")
_WITHOUT_DATA = "without --data (they size the synthetic data set)"
#: Options that only act under a condition: (commands, option, condition on the parsed arguments, when it acts).
#: Given another value than its default where the condition fails, such an option is ignored, and a warning says
#: so. (A warning, not an error: resuming a run needs the settings it was started with, ignored ones included.)
_CONDITIONAL_OPTIONS = [
    (("train-target", "train-draft"), "--preset", lambda a: a.init is None,
     "without --init (the --init checkpoint is the model)"),
    (_DATA_COMMANDS, "--synthetic-users", lambda a: a.data is None, _WITHOUT_DATA),
    (_DATA_COMMANDS, "--synthetic-items", lambda a: a.data is None, _WITHOUT_DATA),
    (("demo",), "--users", lambda a: a.data is None, _WITHOUT_DATA),
    (("demo",), "--items", lambda a: a.data is None, _WITHOUT_DATA),
    (("eval",), "--draft-beams", lambda a: a.draft is not None, "with --draft"),
    (("eval",), "--gamma", lambda a: a.draft is not None, "with --draft"),
    (("eval",), "--draft-policy", lambda a: a.draft is not None, "with --draft"),
    (("train-target",), "--eval-prompts", lambda a: not _trains_on_valid(a), _NO_VALIDATION),
    (("train-target", "train-draft"), "--patience", lambda a: validates(a), _VALIDATION),
    (("train-draft",), "--val-beams", lambda a: validates(a), _VALIDATION),
    (("train-draft",), "--val-draft-beams", lambda a: validates(a), _VALIDATION),
    (("train-draft",), "--val-gamma", lambda a: validates(a), _VALIDATION),
    (("train-draft",), "--on-policy-beams", lambda a: a.on_policy, "with --on-policy"),
    (("train-draft",), "--topk", lambda a: a.objective == "atspeed-s", "with --objective atspeed-s"),
    (("train-draft",), "--alpha", lambda a: a.objective != "ce",
     "with an alignment objective (ce is plain cross-entropy)"),
    (("train-draft",), "--temperature", lambda a: a.objective not in ("ce", "seqkd"),
     "with an objective that compares distributions (not ce or seqkd)"),
]


def ignored_options(parser: argparse.ArgumentParser, args) -> list[str]:
    """A warning for each option set to a non-default value that the other arguments make ignored."""
    command = parser.commands[args.command]
    warnings = []
    for commands, option, acts, when in _CONDITIONAL_OPTIONS:
        dest = option.lstrip("-").replace("-", "_")
        if args.command in commands and getattr(args, dest) != command.get_default(dest) and not acts(args):
            warnings.append(f"warning: {option} is ignored: it only acts {when}")
    return warnings


#: What a command raises for a user's mistake (bad data, paths or settings; DataError is a ValueError; a path that
#: cannot be read or written) or a diverged training run: reported as ``error: ...``, without a traceback unless
#: ATSPEED_DEBUG=1.
USER_ERRORS = (ValueError, OSError, FloatingPointError)

#: What to do after Ctrl-C, per command.
_AFTER_INTERRUPT = {"train-target": "rerun the same command with --resume to continue from OUT/last",
                    "train-draft": "rerun the same command with --resume to continue from OUT/last",
                    "teacher": "rerun the same command, without --overwrite, to continue (finished shards are kept)",
                    "demo": "rerun it: finished training stages are cached, an interrupted one resumes"}


def _expand_paths(args) -> None:
    """``~`` in path options (``--out=~/x`` and values from scripts are not expanded by the shell)."""
    for name in ("data", "out", "output", "checkpoint", "target", "draft", "teacher", "init"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.expanduser(value))


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error (:data:`USER_ERRORS`) ends it with ``error: ...`` on stderr and exit
    status 1 instead of a traceback (set ATSPEED_DEBUG=1 to see the traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for warning in ignored_options(parser, args):
        print(warning, file=sys.stderr)
    _expand_paths(args)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-file load / save bars would break the training bar into pieces
    from .align.commands import run_teacher, run_train_draft
    from .commands import forget_created_folders, remove_created_empty_folders, run_eval, run_train_target
    from .demo import run_demo

    command = {"demo": run_demo, "train-target": run_train_target, "eval": run_eval, "teacher": run_teacher,
               "train-draft": run_train_draft}[args.command]
    forget_created_folders()
    status = 1
    try:
        status = _run(command, args)
        return status
    finally:  # a command that fails (or is interrupted) leaves no empty output folder of its own behind
        if status != 0:
            remove_created_empty_folders()


def _run(command, args) -> int:
    try:
        return command(args)
    except KeyboardInterrupt:
        if os.environ.get("ATSPEED_DEBUG"):
            raise
        print(f"\ninterrupted: {_AFTER_INTERRUPT.get(args.command, 'rerun the command')}", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("ATSPEED_DEBUG"):
            raise
        raise SystemExit(f"error: {e} (ATSPEED_DEBUG=1 shows the traceback)") from None


if __name__ == "__main__":
    sys.exit(main())
