#!/usr/bin/env bash
# What expert training buys a deployer: experiments/retention.py, which reads the
# environment variables named like its options (SRC, WEIGHTS, SETTINGS, METHODS, SEEDS, EPOCHS,
# TRAIN_PER_CLASS, VAL_PER_CLASS, A_CLASSES, B_CLASSES, OUT, RESULTS, SHARDS, DEVICE, PRECISION, WORKERS ...);
# `--help` lists them.
#
#   experiments/retention.sh                                  # the CPU budget of docs/results.md and its blocks
#   nice -n 10 experiments/retention.sh                       # on a shared machine
#   EPOCHS=5 DEVICE=cuda WORKERS=4 RESULTS=experiments/results/retention-gpu.json experiments/retention.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || command -v "$PY" >/dev/null || make install
"$PY" experiments/retention.py "$@"
# the blocks of docs/results.md, when the results went to the default file
if [ -z "${RESULTS:-}" ] && [ -z "${TRAIN_ONLY:-}" ] && [ "$#" -eq 0 ]; then
    "$PY" experiments/summarize.py --all-blocks docs/results.md --only retention --only retention-bn
fi
