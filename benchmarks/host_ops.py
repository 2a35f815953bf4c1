"""Host work per request: how many dispatcher ops each decoder issues outside the two models, per phase, and
where the wall time goes.

On a GPU, small models leave every op costing launch and host time, so the ops a decoder issues around the
model calls are a machine-independent measure of its bookkeeping (on a CPU they cost a few microseconds each).
This decodes Beauty test prompts one at a time with ``BeamSearchDecoder`` and ``SpecBeamDecoder`` under a
dispatch mode that counts every op, and splits the speculative decoder's ops by its NVTX phases (draft, target,
verify, compact; "other": set-up, the round loop, the results). Ops inside the target and draft forwards are
counted apart ("in models"). The ``ms_*`` columns time the same decodes without the counter (``--reps``
passes, the two decoders back to back on each prompt): the median milliseconds per request in each phase and
inside each model's forward (on a GPU the forwards' times are host times: the launches, not the kernels,
unless a phase syncs), and the median paired speedup.

    python benchmarks/host_ops.py --target DIR --draft DIR [--data ../shared/data/beauty] [--beams 10]
        [--draft-beams 40] [--gamma 1] [--requests 16] [--reps 3] [--device cpu] [--dtype bfloat16]
        [--prepack]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import atspeed_ext.spec_decoder as spec_decoder  # noqa: E402
from atspeed_ext import BeamSearchDecoder, SpecBeamDecoder, prepack_for_cpu  # noqa: E402
from atspeed_ext.cli import draft_widths  # noqa: E402

PHASES = ("atspeed/draft", "atspeed/target", "atspeed/verify", "atspeed/compact")


class OpCounter(TorchDispatchMode):
    """Counts dispatcher ops by phase; ops while a model's forward runs go to "in models"."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()
        self.phase = "other"
        self.model_depth = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts["in models" if self.model_depth else self.phase] += 1
        return func(*args, **(kwargs or {}))

    def watch(self, model: torch.nn.Module) -> None:
        model.register_forward_pre_hook(lambda *_: setattr(self, "model_depth", self.model_depth + 1))
        model.register_forward_hook(lambda *_: setattr(self, "model_depth", self.model_depth - 1))

    @contextlib.contextmanager
    def phase_range(self, name, device):
        """Stands in for the decoder's nvtx_range: the ops inside belong to phase ``name``."""
        outer, self.phase = self.phase, name
        try:
            yield
        finally:
            self.phase = outer


class PhaseTimer:
    """Wall milliseconds by phase (the decoder's NVTX ranges, model calls included) and inside each model."""

    def __init__(self):
        self.ms = collections.Counter()
        self._starts = {}

    def watch(self, model: torch.nn.Module, name: str) -> None:
        model.register_forward_pre_hook(lambda *_: self._starts.__setitem__(name, time.perf_counter()))
        model.register_forward_hook(lambda *_: self._add(name, self._starts.pop(name)))

    def _add(self, name: str, start: float) -> None:
        self.ms[name] += (time.perf_counter() - start) * 1e3

    @contextlib.contextmanager
    def phase_range(self, name, device):
        start = time.perf_counter()
        try:
            yield
        finally:
            self._add(name, start)


def timed_phases_paired(decoders: dict, prompts, reps: int, timer: PhaseTimer) -> tuple[dict, float]:
    """Milliseconds per request in total, per phase and per model forward, for each decoder: the **median over
    requests** (``reps`` passes over the prompts, one prompt at a time; the columns of a median need not add up
    to its total). The decoders decode each prompt back to back, in alternating order, so a machine whose speed
    drifts treats them alike; also returns the median over those pairs of the first decoder's total / the
    second's. "other" is the total minus the phases (for BeamSearchDecoder: minus the target's forwards)."""
    per_request = {name: [] for name in decoders}
    ratios = []
    names = list(decoders)
    for rep in range(reps):
        for i, prompt in enumerate(prompts):
            totals = {}
            for name in (names if (rep + i) % 2 == 0 else names[::-1]):  # each prompt: both orders
                timer.ms.clear()
                start = time.perf_counter()
                decoders[name].generate([prompt])
                ms = dict(timer.ms, total=(time.perf_counter() - start) * 1e3)
                phases = [ms[phase] for phase in PHASES if phase in ms]
                ms["other"] = ms["total"] - (sum(phases) if phases else ms.get("target forwards", 0.0))
                per_request[name].append(ms)
                totals[name] = ms["total"]
            if len(names) == 2:
                ratios.append(totals[names[0]] / totals[names[1]])
    medians = {}
    for name, rows in per_request.items():
        keys = {k for row in rows for k in row}
        medians[name] = {k: statistics.median(row.get(k, 0.0) for row in rows) for k in keys}
    return medians, (statistics.median(ratios) if ratios else float("nan"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_arguments(p)
    p.add_argument("--draft-beams", type=draft_widths, default=40,
                   help="N, or one width per trie depth N1,N2,... (default 40)")
    p.add_argument("--gamma", type=common.positive, default=1)
    p.add_argument("--requests", type=common.positive, default=16, help="test prompts decoded one at a time (default 16)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=common.positive, default=3, help="timed passes over the prompts (default 3)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    p.add_argument("--prepack", action="store_true",
                   help="pack the bfloat16 models' linear layers once for oneDNN (prepack_for_cpu; CPU only)")
    p.add_argument("--name", type=common.results_name, default=None, help="results file name (default host_ops_<device>_k<K>)")
    args = p.parse_args(argv)
    if args.requests < 1 or args.reps < 1:
        p.error(f"--requests and --reps must be >= 1, got {args.requests} and {args.reps}")
    if args.prepack and (args.device != "cpu" or args.dtype != "bfloat16"):
        p.error("--prepack packs bfloat16 layers for the CPU: use it with --device cpu --dtype bfloat16")

    device, dtype = common.device(args.device), getattr(torch, args.dtype)
    target, draft, trie, prompts = common.load_models_and_prompts(args, device, dtype)
    if common.widths_error(args.draft_beams, args.beams, trie.depth):
        p.error(common.widths_error(args.draft_beams, args.beams, trie.depth))
    if args.prepack:
        prepack_for_cpu(target)
        prepack_for_cpu(draft)

    counter = OpCounter()
    counter.watch(target)
    counter.watch(draft)
    spec_decoder.nvtx_range = counter.phase_range  # phase attribution only; NVTX is not needed to count
    decoders = {"BeamSearchDecoder": BeamSearchDecoder(target, trie, args.beams),
                "SpecBeamDecoder": SpecBeamDecoder(target, draft, trie, args.beams, args.draft_beams, args.gamma)}
    rows = []
    for name, decoder in decoders.items():
        decoder.generate(prompts[:1])  # warm-up (lazy initialisation is not per-request work)
        counter.counts.clear()
        calls = 0.0
        with counter:
            for prompt in prompts:
                out = decoder.generate([prompt])
                calls += out.stats.mean_target_calls if name == "SpecBeamDecoder" else 0.0
        per_request = {k: v / len(prompts) for k, v in counter.counts.items()}
        outside = sum(v for k, v in per_request.items() if k != "in models")
        rows.append({"decoder": name, "outside_models": outside, "in_models": per_request.get("in models", 0.0),
                     **{phase.split("/")[-1]: per_request.get(phase, 0.0) for phase in PHASES},
                     "other": per_request.get("other", 0.0),
                     "target_calls": calls / len(prompts) if calls else float(trie.depth)})

    timer = PhaseTimer()
    timer.watch(target, "target forwards")
    timer.watch(draft, "draft forwards")
    spec_decoder.nvtx_range = timer.phase_range
    medians, beam_over_spec = timed_phases_paired(decoders, prompts, args.reps, timer)
    for row, ms in zip(rows, medians.values()):
        row.update({"ms_total": ms["total"], "ms_other": ms["other"],
                    **{f"ms_{phase.split('/')[-1]}": ms.get(phase, 0.0) for phase in PHASES},
                    "ms_target_fwd": ms.get("target forwards", 0.0), "ms_draft_fwd": ms.get("draft forwards", 0.0)})

    header = {"command": "python benchmarks/host_ops.py " + " ".join(sys.argv[1:] if argv is None else argv), "target": args.target, "draft": args.draft,
              "K": args.beams, "N": args.draft_beams, "gamma": args.gamma, "requests": args.requests,
              "reps": args.reps, "device": str(device), "dtype": args.dtype, "prepack": args.prepack,
              "spec_speedup_paired": round(beam_over_spec, 3),
              "note": "dispatcher ops per request (batch 1); outside_models = draft + target + verify + compact + "
                      "other (the speculative decoder's phases; for BeamSearchDecoder all in other); ms_* = wall "
                      "milliseconds per request (batch 1), each the median over the reps x requests decodes (the "
                      "columns of medians need not add up to ms_total): ms_draft / ms_target / ... include the model "
                      "forwards that run in them (ms_target_fwd, ms_draft_fwd); ms_other = ms_total - the phases "
                      "(for BeamSearchDecoder: - ms_target_fwd); the two decoders decode each prompt back to back in "
                      "alternating order; spec_speedup_paired = median over those pairs of BeamSearchDecoder ms / "
                      "SpecBeamDecoder ms"}
    columns = ["decoder", "outside_models", "draft", "target", "verify", "compact", "other", "in_models",
               "target_calls", "ms_total", "ms_draft", "ms_target", "ms_verify", "ms_compact", "ms_other",
               "ms_target_fwd", "ms_draft_fwd"]
    md = common.write_results(args.name or f"host_ops_{device.type}_k{args.beams}", header, rows, columns)
    print(md.read_text())


if __name__ == "__main__":
    main()
