#!/usr/bin/env bash
# The paper's comparison on real ImageNet images (Imagenette): experiments/imagenette.py, which
# reads the same environment variables as before (SRC, WEIGHTS, ARCH, SETTINGS, METHODS, SEEDS,
# EPOCHS, TRAIN_LIMIT, VAL_LIMIT, BATCH, LR, ALPHA, STAB_LR, STAB_ALPHA, STAB_SIGMA, OUT, SHARDS,
# JOBS, DEVICE, PRECISION, SELECT_PER_CLASS, CROSS, PARALLEL_SEEDS, WORKERS); `--help` lists them.
#
#   experiments/imagenette.sh                       # defaults; ../shared data
#   SEEDS="0 1 2" EPOCHS=3 TRAIN_LIMIT=9469 experiments/imagenette.sh
#   PARALLEL_SEEDS=1 WORKERS=4 experiments/imagenette.sh   # seeds side by side on one GPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || command -v "$PY" >/dev/null || make install
exec "$PY" experiments/imagenette.py "$@"
