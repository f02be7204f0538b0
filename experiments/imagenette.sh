#!/usr/bin/env bash
# The paper's comparison on real ImageNet images (Imagenette, 10 classes, 1000-way models):
# pretrained vs stability vs fine-tune vs expert on harsh settings of two codecs, the same
# budget for every trained method, several seeds; mean ± spread in the summary.
#
#   experiments/imagenette.sh                       # defaults below; ../shared data
#   SEEDS="0 1 2" EPOCHS=3 TRAIN_LIMIT=9469 experiments/imagenette.sh
#   PARALLEL_SEEDS=1 WORKERS=4 experiments/imagenette.sh   # seeds side by side on one GPU
#
# Every step reuses finished work (shards, complete runs), so the script can be re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

SRC=${SRC:-../shared/imagenette}
WEIGHTS=${WEIGHTS:-../shared/weights/mobilenet_v2_imagenet.pth}
ARCH=${ARCH:-mobilenet_v2}
SETTINGS=${SETTINGS:-"jpeg-10 j2k-200"}
METHODS=${METHODS:-"stability finetune expert"}   # also expert-teacher: label-free expert (--labels teacher)
SEEDS=${SEEDS:-"0 1 2"}
EPOCHS=${EPOCHS:-2}
TRAIN_LIMIT=${TRAIN_LIMIT:-2000}      # samples per epoch (the shuffle draws from all train shards)
VAL_LIMIT=${VAL_LIMIT:-}              # empty = the whole val split (3925)
BATCH=${BATCH:-32}
LR=${LR:-1e-4}
ALPHA=${ALPHA:-1e-2}
STAB_LR=${STAB_LR:-1e-4}              # stability: classifier layers only
STAB_ALPHA=${STAB_ALPHA:-5e-3}
STAB_SIGMA=${STAB_SIGMA:-4e-2}
OUT=${OUT:-runs/imagenette}
SHARDS=${SHARDS:-shards}
JOBS=${JOBS:-$(nproc)}
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-auto}
VAL_DURING=${VAL_DURING:-1}           # 0: no per-epoch validation (the lr schedule then follows the train loss)
CROSS=${CROSS:-1}                     # 0: evaluate each model only on the setting it was trained on
PARALLEL_SEEDS=${PARALLEL_SEEDS:-0}   # 1: train the seeds at the same time (one big GPU, many cores)
WORKERS=${WORKERS:-}                  # loader processes per run (trainer default 4)

[ -x "$PY" ] || command -v "$PY" >/dev/null || make install
[ -d "$SRC/train" ] || { echo "no $SRC/train: set SRC=/path/to/imagenette" >&2; exit 2; }
mkdir -p "$OUT"
limit_val=${VAL_LIMIT:+--limit $VAL_LIMIT}

for setting in $SETTINGS; do
  codec=${setting%-*}; q=${setting##*-}
  for split in train val; do
    $PY -m pipeline shards --codec "$codec" --q "$q" --src "$SRC" --split $split --out "$SHARDS" --jobs "$JOBS" --shard-size 500
  done
done

val_globs=()
for setting in $SETTINGS; do val_globs+=("$SHARDS/val/$setting/shard-*.tar"); done

# the pretrained model on every setting
$PY -m trainer.eval --arch "$ARCH" --weights "$WEIGHTS" --shards "${val_globs[@]}" --out "$OUT/results.json" \
    --device "$DEVICE" $limit_val --no-progress

run_dir() { echo "$OUT/runs/$1-$2-s$3"; }   # method, setting, seed

train_seed() {
  local seed=$1 setting method run extra val_arg
  for setting in $SETTINGS; do
    for method in $METHODS; do
      run=$(run_dir "$method" "$setting" "$seed")
      extra=(--method "${method%-teacher}" --lr "$LR" --alpha "$ALPHA")
      [ "$method" = stability ] && extra=(--method stability --lr "$STAB_LR" --alpha "$STAB_ALPHA" --sigma "$STAB_SIGMA")
      [ "$method" = expert-teacher ] && extra+=(--labels teacher)
      if [ ! -f "$run/best.pth" ] || [ "$(wc -l < "$run/metrics.jsonl" 2>/dev/null || echo 0)" -lt "$EPOCHS" ]; then
        val_arg=(); [ "$VAL_DURING" = 1 ] && val_arg=(--val-shards "$SHARDS/val/$setting/shard-*.tar")
        $PY -m trainer.run --shards "$SHARDS/train/$setting/shard-*.tar" "${val_arg[@]}" \
            --arch "$ARCH" --weights "$WEIGHTS" "${extra[@]}" --epochs "$EPOCHS" \
            --train-limit "$TRAIN_LIMIT" ${VAL_LIMIT:+--val-limit $VAL_LIMIT} --batch-size "$BATCH" \
            --seed "$seed" --out "$run" --resume auto --device "$DEVICE" --no-progress ${WORKERS:+--workers $WORKERS}
      fi
    done
  done
}

checkpoints=()
for seed in $SEEDS; do
  if [ "$PARALLEL_SEEDS" = 1 ]; then
    train_seed "$seed" > "$OUT/train-s$seed.log" 2>&1 &
  else
    train_seed "$seed"
  fi
  for setting in $SETTINGS; do
    for method in $METHODS; do checkpoints+=("$(run_dir "$method" "$setting" "$seed")/best.pth"); done
  done
done
if [ "$PARALLEL_SEEDS" = 1 ]; then
  failed=0
  for job in $(jobs -p); do wait "$job" || failed=1; done
  [ "$failed" = 0 ] || { echo "a seed failed: see $OUT/train-s*.log" >&2; tail -n 20 "$OUT"/train-s*.log >&2; exit 1; }
fi

if [ "$CROSS" = 1 ]; then
  $PY -m trainer.eval --checkpoint "${checkpoints[@]}" --shards "${val_globs[@]}" --out "$OUT/results.json" \
      --device "$DEVICE" $limit_val --no-progress
else
  for setting in $SETTINGS; do
    mine=(); for c in "${checkpoints[@]}"; do case "$c" in *-"$setting"-s*) mine+=("$c");; esac; done
    $PY -m trainer.eval --checkpoint "${mine[@]}" --shards "$SHARDS/val/$setting/shard-*.tar" --out "$OUT/results.json" \
        --device "$DEVICE" $limit_val --no-progress
  done
fi
$PY -m trainer.report --results "$OUT/results.json" --shards "$SHARDS" --runs "$OUT/runs" --out "$OUT/reports"
$PY experiments/summarize.py "$OUT/results.json" | tee "$OUT/summary.md"
