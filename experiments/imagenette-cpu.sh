#!/usr/bin/env bash
# The README's current Imagenette tables (issue 17 item 6): the paper's comparison re-run on
# mixed shards at a CPU budget, and the same budget on class-sorted shards for comparison.
# Three invocations of experiments/imagenette.py (each reuses finished work; the second also
# scores the pretrained model on j2k-200 as a raw codestream, the old container), then the
# README blocks.  The budget is imagenette.py's defaults (see --help); the environment (SEEDS,
# EPOCHS, TRAIN_LIMIT, DEVICE, WORKERS ...) passes through to all three.
#
#   nice -n 10 experiments/imagenette-cpu.sh          # the README's CPU budget (2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || command -v "$PY" >/dev/null || make install
RESULTS_DIR=${RESULTS_DIR:-experiments/results}
MIXED=$RESULTS_DIR/imagenette-cpu-mixed.json
SORTED=$RESULTS_DIR/imagenette-cpu-sorted.json
BASE=${OUT:-runs/experiments/imagenette}
unset OUT RESULTS ORDER METHODS SETTINGS

# seed by seed, so that an interrupted run leaves whole seeds of every table
for seed in ${SEEDS:-0 1 2}; do
    # 1. mixed shards: stability, fine-tune and expert on both settings; label-free expert on j2k-200
    "$PY" experiments/imagenette.py --seeds "$seed" --out "$BASE" --results "$MIXED" --order mixed \
        --settings "jpeg-10 j2k-200" --methods "stability finetune expert"
    "$PY" experiments/imagenette.py --seeds "$seed" --out "$BASE" --results "$MIXED" --order mixed \
        --settings j2k-200 --methods expert+teacher --codestream-results "$RESULTS_DIR/imagenette-cpu-j2k-codestream.json"
    # 2. the same budget on class-sorted shards (the old order): fine-tune and expert on j2k-200
    "$PY" experiments/imagenette.py --seeds "$seed" --out "$BASE-sorted" --results "$SORTED" --order sorted \
        --settings j2k-200 --methods "finetune expert"
done
[ -n "${TRAIN_ONLY:-}" ] && exit 0
# 3. the README blocks
[ "$RESULTS_DIR" = experiments/results ] || { "$PY" experiments/summarize.py "$MIXED"; exit 0; }
"$PY" experiments/summarize.py --all-blocks README.md --only imagenette --only imagenette-order \
    --only imagenette-container
