#!/usr/bin/env bash
# The whole draft-alignment experiment on Beauty (issue 5), each stage cached and skipped when done:
#   1. the target (target-8x512, bf16 autocast, 3 epochs) and a CE draft (draft-1x128, 5 epochs) on all data;
#   2. teacher data: the target's top-20 beams on the first $TEACHER_PROMPTS training prompts;
#   3. one draft per objective, each fine-tuned from the CE draft on those prompts ($DRAFT_EPOCHS epochs);
#   4. benchmarks/bench_align.py on the first $TEST_PROMPTS test prompts (results/align_beauty_n<P>_e<E>.md).
#
#     bash benchmarks/run_align_beauty.sh           # DATA, CACHE, TEACHER_PROMPTS, ... override the defaults
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/beauty}
CACHE=${CACHE:-${ATSPEED_CACHE:-$HOME/.cache/atspeed_ext}}
TEACHER_PROMPTS=${TEACHER_PROMPTS:-16384}
DRAFT_EPOCHS=${DRAFT_EPOCHS:-2}
TEST_PROMPTS=${TEST_PROMPTS:-100}
OBJECTIVES=${OBJECTIVES:-"ce wordkd tvdkd seqkd atspeed-s atspeed-r"}
DRAFT_BEAMS=${DRAFT_BEAMS:-"40"}
BENCH=${BENCH:-1}                   # 0: train only (run the benchmark later, on a quiet machine)
target=$CACHE/beauty-target-8x512
ce=$CACHE/beauty-draft-1x128-ce
teacher=$CACHE/beauty-teacher-8x512-k20-n$TEACHER_PROMPTS

[ -f "$target/best/model.safetensors" ] || atspeed-ext train-target --data "$DATA" --preset target-8x512 --epochs 3 \
    --batch-size 64 --lr 1e-3 --eval-every 800 --eval-prompts 500 --precision bf16 --out "$target" --resume
[ -f "$ce/best/model.safetensors" ] || atspeed-ext train-target --data "$DATA" --preset draft-1x128 --epochs 5 \
    --batch-size 64 --lr 3e-3 --eval-prompts 500 --out "$ce" --resume
atspeed-ext teacher --data "$DATA" --checkpoint "$target/best" --num-beams 20 --limit "$TEACHER_PROMPTS" \
    --batch-size 64 --out "$teacher"   # resumes / skips finished shards

drafts=()
for obj in $OBJECTIVES; do
  out=$CACHE/beauty-align-$obj-n$TEACHER_PROMPTS-e$DRAFT_EPOCHS   # a finished draft is reused only by the same settings
  [ -f "$out/best/model.safetensors" ] || atspeed-ext train-draft --data "$DATA" --target "$target/best" \
      --teacher "$teacher" --objective "$obj" --init "$ce/best" --epochs "$DRAFT_EPOCHS" --lr 1e-3 \
      --eval-prompts 200 --val-beams 10 --val-draft-beams 40 --val-gamma 3 --out "$out" --resume
  drafts+=(--draft "$obj=$out/best")
done
[ "$BENCH" = 1 ] || exit 0
python benchmarks/bench_align.py --data "$DATA" --target "$target/best" "${drafts[@]}" --beams 5 10 20 \
    --draft-beams $DRAFT_BEAMS --gamma 3 --requests "$TEST_PROMPTS" --name "align_beauty_n${TEACHER_PROMPTS}_e$DRAFT_EPOCHS"
