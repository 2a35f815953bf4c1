#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU and torch, transformers, pybind11, scikit-build-core, cmake and
# ninja preinstalled (no network): build with the CUDA kernels required, run the whole test suite (CUDA
# tests included), run the GPU benchmarks, and print a short table last. Budget: under 8 minutes.
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

echo
echo "== summary ($(python -c 'import torch; print(torch.cuda.get_device_name())'), $(date -u +%Y-%m-%d))"
grep "^B " "$log/bench_beam_step.txt" | sed 's/^/beam_step   /'
grep "^batch" "$log/bench_beam_search.txt" | sed 's/^/beam_search /'
