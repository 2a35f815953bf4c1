#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU and torch, transformers, pybind11, scikit-build-core, cmake, ninja
# and pytest preinstalled (no network): build with the CUDA kernels required, run the whole test suite (CUDA
# tests included), run the GPU benchmarks, and print a short table last. Each stage has its own time limit and
# a failing stage does not stop the later ones (only a failed build does), so one run shows everything.
#
#     bash benchmarks/gpu_check.sh    # logs in $OUT/gpu_check (or /tmp/gpu_check), results in benchmarks/results
#
# Environment (all optional):
#   ATSPEED_BEAUTY   Beauty data directory (default: shared/data/beauty or ../shared/data/beauty, if present)
#   ATSPEED_TARGET   trained target checkpoint for the Beauty stages (without it and ATSPEED_DRAFT they are
#                    skipped, with a line in the summary: training them would not fit the stages' limits)
#   ATSPEED_DRAFT    trained cross-entropy draft checkpoint
#   ATSPEED_ALIGNED_DRAFT  an aligned (AtSpeed-S) draft: adds its K = 10, batch 1 rows (default: skipped)
#   ATSPEED_CUDA_ARCH_LIST  compute capabilities to build (default: the visible GPU's)
#   GPU_CHECK_BUDGET seconds after which the optional stages (profile, bfloat16, K = 20, beam-search sweep) are
#                    skipped (default 420)
#   GPU_CHECK_SKIP   stage names to skip, space-separated (e.g. "spec_k10 profile"; the build cannot be skipped)
#
# On a machine without the data or the cached models, `python benchmarks/pack_for_gpu.py --out DIR
# --target TARGET/best --draft DRAFT/best` packs them
# (55 MiB: the target's weights in bfloat16) into a folder to carry, and prints the three variables to set. On
# the H200 (torch 2.11, 2026-11-27) the build took 55 s, the suite 70 s, the K = 10 grid at batch 1 ~10 s a point.
# Every stage, run, failed or skipped, has a line in the summary; the exit status is non-zero when one failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
log=$(realpath -m "${OUT:-/tmp}/gpu_check")
mkdir -p "$log" || exit 1
rm -f "$log"/*.log "$log/results.tgz"
export PYTHONUNBUFFERED=1
start=$(date +%s)
budget=${GPU_CHECK_BUDGET:-420}
: > "$log/stages.txt"
stamp=$(mktemp)   # results older than this are not this run's

# stage NAME LIMIT_S LOGFILE COMMAND...: run with a time limit, append the output to LOGFILE, record rc and time.
stage() {
  local name=$1 limit=$2 out=$3 t0 rc
  shift 3
  if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
    printf '%-28s skipped (GPU_CHECK_SKIP)\n' "$name" | tee -a "$log/stages.txt"
    return 0
  fi
  echo "== $name (limit ${limit} s)" | tee -a "$out"
  t0=$(date +%s)
  timeout -k 15 "$limit" "$@" >> "$out" 2>&1
  rc=$?
  printf '%-28s rc %3d  %4d s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" | tee -a "$log/stages.txt"
  return $rc
}
# time_left NAME: whether the budget allows an optional stage; if not, the summary says it was skipped.
time_left() {
  [ $(( $(date +%s) - start )) -lt "$budget" ] && return 0
  printf '%-28s skipped (GPU_CHECK_BUDGET %s s spent)\n' "$1" "$budget" | tee -a "$log/stages.txt"
  return 1
}
skipped() { printf '%-28s skipped (%s)\n' "$1" "$2" | tee -a "$log/stages.txt"; }

python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)" || exit 1
python -c "import transformers; print('transformers', transformers.__version__)" || exit 1
if [ -z "${CUDACXX:-}" ]; then
  for c in /usr/local/cuda/bin/nvcc "$(command -v nvcc || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then export CUDACXX=$(readlink -f "$c"); break; fi
  done
fi
export ATSPEED_CUDA_ARCH_LIST=${ATSPEED_CUDA_ARCH_LIST:-$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
[ -n "$ATSPEED_CUDA_ARCH_LIST" ] || { echo "could not read the GPU's compute capability"; exit 1; }
echo "CUDACXX=${CUDACXX:-unset}, arch ${ATSPEED_CUDA_ARCH_LIST}"

ATSPEED_WITH_CUDA=ON GPU_CHECK_SKIP= stage build 300 "$log/build.log" python -m pip install --no-build-isolation --no-deps -v . \
  || { tail -40 "$log/build.log"; exit 1; }
grep "atspeed_ext:" "$log/build.log" || true

# Whole suite, in parallel where pytest-xdist is installed (one CPU thread per worker: 14 workers with 16
# threads each made the suite 4x slower on the H200 machine); a per-test limit where pytest-timeout is.
pytest_args=(-q -rfE --tb=short --durations=10 -p no:cacheprovider)
python -c "import xdist" 2>/dev/null && pytest_args+=(-n 14)
python -c "import pytest_timeout" 2>/dev/null && pytest_args+=(--timeout 100)
if [ -d python_tests ]; then
  (cd python_tests && OMP_NUM_THREADS=1 ATSPEED_REQUIRE_CUDA=1 stage tests 180 "$log/tests.log" \
     python -m pytest "${pytest_args[@]}" .)
else
  printf '%-28s rc %3d  (no python_tests folder)\n' tests 1 | tee -a "$log/stages.txt"
fi
[ -f "$log/tests.log" ] && grep -E "^(FAILED|ERROR)|passed|failed" "$log/tests.log" | tail -30

# bench: a stage, then this run's results into $log/results.tgz, so a run stopped at its time limit keeps them.
bench() {
  local rc
  stage "$@"
  rc=$?
  find benchmarks/results -name '*cuda*' -newer "$stamp" -print0 | tar czf "$log/results.tgz" --null -T -
  return $rc
}

bench_log=$log/bench.log
bench beam_step 60 "$bench_log" python benchmarks/bench_beam_step.py --device cuda --reps 100
beauty=${ATSPEED_BEAUTY:-$( [ -d shared/data/beauty ] && echo shared/data/beauty || echo ../shared/data/beauty )}
models=(--data "$beauty")
[ -n "${ATSPEED_TARGET:-}" ] && models+=(--target "$ATSPEED_TARGET")
[ -n "${ATSPEED_DRAFT:-}" ] && models+=(--draft "$ATSPEED_DRAFT")
if [ ! -d "$beauty" ]; then
  skipped "spec (Beauty stages)" "no Beauty data at $beauty: set ATSPEED_BEAUTY"
elif [ -z "${ATSPEED_TARGET:-}" ] || [ -z "${ATSPEED_DRAFT:-}" ]; then
  skipped "spec (Beauty stages)" "set ATSPEED_TARGET and ATSPEED_DRAFT (benchmarks/pack_for_gpu.py)"
else
  # Speculative beam search on Beauty (issue 4): K = 10, N x gamma with the K-anchored draft policy (the CPU
  # runs compare the policies), batch 1 and 16: about 150 s on an H200 for 32 requests.
  spec=(python benchmarks/bench_spec_beauty.py --device cuda "${models[@]}" --requests 32
        --batches 1 16 --policies anchored)
  bench spec_k10 240 "$bench_log" "${spec[@]}" --beams 10 --name spec_beauty_cuda_k10
  # Wide trees: on a GPU a tree token costs almost nothing, so N up to 256 and gamma = 3 (every level of a
  # depth-4 trie verified by the first call when the draft covers them) trade draft work for target calls.
  wide=(python benchmarks/bench_spec_beauty.py --device cuda "${models[@]}" --requests 32 --batches 1 16
        --policies beam --no-hf)
  time_left spec_k10_wide && bench spec_k10_wide 150 "$bench_log" "${wide[@]}" --beams 10 --draft-beams 40 64 128 256 \
    --gammas 1 3 --name spec_beauty_cuda_k10_wide
  # The issue's other K with the widths that win on a GPU (gamma 1, the best above).
  time_left spec_wide_k && bench spec_wide_k 150 "$bench_log" "${wide[@]}" --beams 1 5 20 --draft-beams -1 40 64 128 \
    --gammas 1 --name spec_beauty_cuda_wide_k1_5_20
  # The ops each decoder issues outside the models per request (each a launch or host step on the GPU); then
  # where a round's time goes (host ops, syncs, kernels), for BeamSearchDecoder and N = 20, gamma = 1.
  time_left host_ops && bench host_ops 60 "$bench_log" python benchmarks/host_ops.py --device cuda "${models[@]}" \
    --requests 8
  time_left profile && stage profile 90 "$log/profile.log" python benchmarks/profile_spec.py --device cuda \
    "${models[@]}" --requests 16
  if [ -n "${ATSPEED_ALIGNED_DRAFT:-}" ]; then
    # The aligned draft, the best K = 10 draft on the CPU: batch 1, gamma 1, both policies' common choice.
    time_left spec_k10_aligned && bench spec_k10_aligned 120 "$bench_log" python benchmarks/bench_spec_beauty.py --device cuda \
      --data "$beauty" --target "$ATSPEED_TARGET" --draft "$ATSPEED_ALIGNED_DRAFT" --requests 32 --batches 1 \
      --beams 10 --draft-beams 20 30 40 --gammas 1 --policies beam --no-hf --name spec_beauty_cuda_k10_aligned
  fi
  time_left spec_k10_bf16 && bench spec_k10_bf16 120 "$bench_log" "${spec[@]}" --beams 10 --dtype bfloat16 \
    --name spec_beauty_cuda_k10_bf16
  time_left spec_k20 && bench spec_k20 150 "$bench_log" "${spec[@]}" --beams 20 --name spec_beauty_cuda_k20
fi
time_left beam_search && bench beam_search 120 "$bench_log" python benchmarks/bench_beam_search.py --device cuda --reps 5 \
  --hf-reps-large 2
echo
echo "== summary ($(python -c 'import torch; print(torch.cuda.get_device_name())'), $(date -u +%Y-%m-%d))"
cat "$log/stages.txt"
[ -f "$log/tests.log" ] && grep -E "passed|failed" "$log/tests.log" | tail -1
grep -hE "^(B |batch|K +(10|20) B)" "$bench_log" || true
# Non-zero when any stage failed or ran out of time (the table above says which).
! grep -qE " rc +[1-9]" "$log/stages.txt"
