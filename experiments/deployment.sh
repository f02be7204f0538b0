#!/usr/bin/env bash
# What a deployer can serve: experiments/deployment.py (specialists and a generalist, --bn train
# and frozen, every model on all ten settings), which reads the environment variables named
# like its options (SRC, WEIGHTS, SEEDS, TRAIN_PER_CLASS, VAL_PER_CLASS, EPOCHS, OUT, ...);
# `--help` lists them.
#
#   experiments/deployment.sh                         # the CPU budget of docs/deployment.md
#   SEEDS="0 1 2" TRAIN_PER_CLASS=300 DEVICE=cuda experiments/deployment.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || command -v "$PY" >/dev/null || make install
exec "$PY" experiments/deployment.py "$@"
