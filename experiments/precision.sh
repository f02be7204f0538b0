#!/usr/bin/env bash
# bf16 against fp32: experiments/precision.py (evaluation agreement of the pretrained model and
# an expert, and expert training over seeds in each precision), which reads the environment
# variables named like its options (SRC, WEIGHTS, SEEDS, TRAIN_PER_CLASS, VAL_PER_CLASS, EPOCHS,
# OUT, PUBLISH, DEVICE, WORKERS ...); `--help` lists them.  Then docs/benchmarks.md's block.
#
#   experiments/precision.sh                          # the CPU budget of docs/benchmarks.md
#   nice -n 10 experiments/precision.sh               # on a shared machine
#   SEEDS="0 1 2 3" DEVICE=cuda PUBLISH=experiments/results/precision-gpu.json experiments/precision.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || command -v "$PY" >/dev/null || make install
"$PY" experiments/precision.py "$@"
# the block of docs/benchmarks.md, when the results went to the default file
if [ -z "${PUBLISH:-}" ] && [ "$#" -eq 0 ]; then
    "$PY" benchmarks/readme_block.py precision-accuracy
fi
