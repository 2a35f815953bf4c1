"""The ``atspeed-ext`` command line (also ``python -m atspeed_ext``)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atspeed-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="trie-constrained beam search on a synthetic catalogue and a small model "
                                       "(no downloads): BeamSearchDecoder vs Hugging Face generate")
    demo.add_argument("--items", type=_positive, default=12000, help="catalogue size (default 12000)")
    demo.add_argument("--codes", type=_positive, default=256, help="codes per identifier level (default 256)")
    demo.add_argument("--requests", type=_positive, default=64, help="number of prompts (default 64)")
    demo.add_argument("--batch-size", type=_positive, default=8, help="prompts per batch (default 8)")
    demo.add_argument("--num-beams", type=_positive, default=10, help="K, the beams and items returned (default 10)")
    demo.add_argument("--layers", type=_positive, default=4, help="model layers (default 4)")
    demo.add_argument("--hidden", type=_positive, default=256, help="model hidden size (default 256)")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--skip-hf", action="store_true", help="do not run the Hugging Face baseline")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
