#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU and torch, transformers, pybind11, scikit-build-core, cmake and
# ninja preinstalled (no network): build with the CUDA kernels required, run the whole test suite (CUDA
# tests included), run the GPU benchmarks, and print a short table last. Budget: under 8 minutes without the
# Beauty stage; that stage trains two models first when they are not cached (a few minutes more, untested).
#
#     bash benchmarks/gpu_check.sh            # results land in benchmarks/results/*_cuda.{json,md}
set -euo pipefail
cd "$(dirname "$0")/.."
log=${OUT:-/tmp}/gpu_check
mkdir -p "$log"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
python -c "import transformers; print('transformers', transformers.__version__)"

if [ -z "${CUDACXX:-}" ]; then
  for c in /usr/local/cuda/bin/nvcc "$(command -v nvcc || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then export CUDACXX=$(readlink -f "$c"); break; fi
  done
fi
echo "== build (CUDACXX=${CUDACXX:-unset}, arch ${ATSPEED_CUDA_ARCH_LIST:-8.0;9.0})"
t0=$(date +%s)
ATSPEED_WITH_CUDA=ON pip install --no-build-isolation --no-deps -v . > "$log/build.log" 2>&1 || { tail -40 "$log/build.log"; exit 1; }
grep "atspeed_ext:" "$log/build.log" || true
echo "   build took $(( $(date +%s) - t0 )) s"

echo "== tests"
cd python_tests
ATSPEED_REQUIRE_CUDA=1 python -m pytest -q -x -p no:cacheprovider . 2>&1 | tail -5
cd ..

echo "== benchmarks"
python benchmarks/bench_beam_step.py --device cuda --reps 100 | tee "$log/bench_beam_step.txt"
python benchmarks/bench_beam_search.py --device cuda --reps 5 --hf-reps-large 3 | tee "$log/bench_beam_search.txt"
# Speculative beam search on Beauty (issue 4): trains target-8x512 (bf16, 3 epochs) and a CE draft-1x128 on the
# GPU first unless they are cached (ATSPEED_CACHE), then the K x N x gamma grid at K = 10 and 20.
if [ -d ../shared/data/beauty ] || [ -d shared/data/beauty ]; then
  beauty=$( [ -d shared/data/beauty ] && echo shared/data/beauty || echo ../shared/data/beauty )
  export ATSPEED_CACHE=${ATSPEED_CACHE:-$log/cache}
  python benchmarks/bench_spec_beauty.py --device cuda --data "$beauty" --beams 10 20 --gammas 1 2 3 \
      --requests 64 --batches 1 16 | tee "$log/bench_spec_beauty.txt"
  python benchmarks/bench_spec_beauty.py --device cuda --data "$beauty" --beams 10 --gammas 1 2 3 \
      --requests 64 --batches 1 16 --dtype bfloat16 --name spec_beauty_cuda_bf16 | tee "$log/bench_spec_beauty_bf16.txt"
else
  echo "(no Beauty data found: skipping bench_spec_beauty.py)" | tee "$log/bench_spec_beauty.txt"
fi

echo
echo "== summary ($(python -c 'import torch; print(torch.cuda.get_device_name())'), $(date -u +%Y-%m-%d))"
grep "^B " "$log/bench_beam_step.txt" | sed 's/^/beam_step   /'
grep "^batch" "$log/bench_beam_search.txt" | sed 's/^/beam_search /'
grep -E "^K +(10|20) B" "$log/bench_spec_beauty.txt" | grep -E "BeamSearch|HF|g 3 anchored" | sed 's/^/spec_beauty /' || true
grep -E "^K +10 B" "$log/bench_spec_beauty_bf16.txt" | grep -E "BeamSearch|HF|g 1 anchored" | sed 's/^/spec_bf16   /' || true
