"""Test Recall@K / NDCG@K of several checkpoints and popularity on the same prompts, with standard errors and
paired differences: how much of a gap between two trained targets is more than the sampling noise of the split.

    python benchmarks/compare_recall.py --data ../shared/data/beauty --checkpoint A/best --checkpoint B/best \\
        [--k 10] [--split test] [--device cpu] [--name recall_compare]

Standard errors are over prompts (sd / sqrt(n)); a paired difference's z is its mean over its standard error.
Popularity counts the train interactions only (``atspeed-ext eval`` adds the valid ones for a checkpoint trained
with ``--train-on-valid``); on the test split a second, recency-aware baseline ranks items by their validation-period
interactions alone (the latest before the test period), the reference for a model fine-tuned on them
(``--valid-only``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from atspeed_ext.commands import device_of  # noqa: E402
from atspeed_ext.evaluate import mean_and_se, model_scores, popularity_scores  # noqa: E402
from atspeed_ext.machine import machine_name  # noqa: E402
from atspeed_ext.models import load_checkpoint, trained_on_valid  # noqa: E402


def label(path: str) -> str:
    """The checkpoint's run and stage, e.g. ``beauty-target-8x512-drop1/best``."""
    parts = Path(path).resolve().parts
    return "/".join(parts[-2:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=common.data_dir, required=True,
                   help="an LC-Rec format directory, e.g. ../shared/data/beauty")
    p.add_argument("--checkpoint", action="append", required=True, help="a checkpoint directory (repeat)")
    p.add_argument("--k", type=common.positive, default=10)
    p.add_argument("--split", choices=["test", "valid"], default="test")
    p.add_argument("--batch-size", type=common.positive, default=32)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--name", type=common.results_name, default="recall_compare", help="results file name in benchmarks/results/")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    device = device_of(args)
    data = common.load_data(args.data)
    prompts = data.test_prompts() if args.split == "test" else data.valid_prompts()
    scores = {}
    for path in args.checkpoint:
        trained_on_valid(path, args.split)  # warns when its validation scores would measure training data
        model, tokenizer = load_checkpoint(path, device, identifiers=data.identifiers)
        name = label(path)
        if name in scores:  # one row would silently replace the other
            raise SystemExit(f"error: two checkpoints are both labelled {name!r} (the last two folders of their paths)")
        scores[name] = model_scores(model, tokenizer, prompts, args.k, args.batch_size)
    scores["popularity"] = popularity_scores(data, prompts, args.k)
    if args.split == "test":
        scores["popularity (validation period)"] = popularity_scores(data, prompts, args.k,
                                                                     counts=data.valid_item_counts())
    pop_recall = mean_and_se(scores["popularity"][0])[0]

    rows = []
    for name, (recalls, ndcgs) in scores.items():
        (r, r_se), (n, n_se) = mean_and_se(recalls), mean_and_se(ndcgs)
        ratio = f"{r / pop_recall:.2f}" if pop_recall else "n/a"
        rows.append({"model": name, f"recall@{args.k}": f"{r:.4f} ± {r_se:.4f}",
                     f"ndcg@{args.k}": f"{n:.4f} ± {n_se:.4f}", "x popularity": ratio, "z": ""})
    names = list(scores)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d, se = mean_and_se([x - y for x, y in zip(scores[a][0], scores[b][0])])
            rows.append({"model": f"{a} minus {b}", f"recall@{args.k}": f"{d:+.4f} ± {se:.4f}",
                         f"ndcg@{args.k}": "", "x popularity": "", "z": f"{d / se:+.2f}" if se else ""})
    columns = ["model", f"recall@{args.k}", f"ndcg@{args.k}", "x popularity", "z"]
    for row in rows:
        print("  ".join(f"{c} {row[c]}" for c in columns if row[c]))
    command = "python benchmarks/compare_recall.py " + " ".join(sys.argv[1:] if argv is None else argv)
    md = common.write_results(args.name, {"command": command, "split": args.split, "prompts": len(prompts),
                                          "machine": machine_name(device), "device": str(device),
                                          "note": "mean ± standard error over prompts; 'A minus B' rows: the "
                                                  "paired difference ± its standard error, and z = difference / se"},
                              rows, columns)
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
