"""Where the time of a speculative round goes: BeamSearchDecoder and SpecBeamDecoder under torch.profiler.

On a GPU, small models make every call cost launch and host time rather than arithmetic; this prints, for each
decoder, the wall time per request, then the top ops by self CPU time (and by self CUDA time on a GPU), so the
host work and the syncs that a round adds over a beam-search step can be read off one table.

    python benchmarks/profile_spec.py --target DIR --draft DIR [--data ../shared/data/beauty] [--device cuda]
        [--beams 10] [--draft-beams 20] [--gamma 1] [--policy anchored] [--requests 16] [--rows 20]
        [--dtype float32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from atspeed_ext import BeamSearchDecoder, SpecBeamDecoder  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_arguments(p)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--draft-beams", type=common.positive, default=20)
    p.add_argument("--gamma", type=common.positive, default=1)
    p.add_argument("--policy", choices=["beam", "anchored"], default="anchored", help="draft policy (default anchored)")
    p.add_argument("--requests", type=common.positive, default=16, help="test prompts decoded one at a time (default 16)")
    p.add_argument("--rows", type=common.positive, default=20, help="ops listed per table (default 20)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="model dtype (default float32)")
    args = p.parse_args(argv)
    if args.requests < 1:
        p.error(f"--requests must be >= 1, got {args.requests}")

    device = common.device(args.device)
    dtype = getattr(torch, args.dtype)
    target, draft, trie, prompts = common.load_models_and_prompts(args, device, dtype)
    decoders = {"BeamSearchDecoder": BeamSearchDecoder(target, trie, args.beams),
                f"SpecBeamDecoder N={args.draft_beams} gamma={args.gamma}":
                    SpecBeamDecoder(target, draft, trie, args.beams, args.draft_beams, args.gamma,
                                    draft_policy=args.policy)}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, decoder in decoders.items():
        decoder.generate(prompts[:1])  # warm-up
        sync()
        start = time.perf_counter()
        for prompt in prompts:
            decoder.generate([prompt])
        sync()
        ms = 1e3 * (time.perf_counter() - start) / len(prompts)
        with profile(activities=activities) as prof:
            for prompt in prompts:
                decoder.generate([prompt])
            sync()
        print(f"\n== {name}: {ms:.2f} ms per request ({device}, {len(prompts)} requests, one at a time)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
        if device.type == "cuda":
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
