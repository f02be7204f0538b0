# Run `make help` for the targets.  Every target sets itself up: a fresh Debian machine with
# Python 3.11 needs nothing else (system packages are installed when run as root).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# make shards CODEC=j2k Q=200 SRC=/data/imagenet SPLIT=val OUT=shards JOBS=2
# make shards SETTINGS=jpeg-10,j2k-200 LAYOUT=split ...    (several settings in one pass)
# make shards ... BACKEND=dask SCHEDULER=tcp://HOST:8786    (a Dask cluster)
# make shards ... NUM_NODES=8 NODE_RANK=$$SLURM_ARRAY_TASK_ID (one rank of a batch array)
CODEC      ?= jpeg
Q          ?=
SETTINGS   ?=
SRC        ?=
SPLIT      ?= val
OUT        ?= shards
JOBS       ?= $(shell nproc 2>/dev/null || echo 1)
SHARD_SIZE ?= 1000
LIMIT      ?=
OPTS       ?=
LAYOUT     ?=
ORDER      ?=
SEED       ?=
MAX_PIXELS ?=
BACKEND    ?=
SCHEDULER  ?=
NUM_NODES  ?=
NODE_RANK  ?=
# make shards-paper: the paper's nine settings and the reference (pipeline.setting.PAPER_SETTINGS)
PAPER_SETTINGS ?= paper
SHARDS_ARGS = --src $(SRC) $(if $(SPLIT),--split $(SPLIT)) --out $(OUT) --jobs $(JOBS) --shard-size $(SHARD_SIZE) \
  $(if $(LIMIT),--limit $(LIMIT)) $(if $(ORDER),--order $(ORDER)) $(if $(SEED),--seed $(SEED)) \
  $(if $(MAX_PIXELS),--max-pixels $(MAX_PIXELS)) $(if $(BACKEND),--backend $(BACKEND)) \
  $(if $(SCHEDULER),--scheduler $(SCHEDULER)) $(if $(NUM_NODES),--num-nodes $(NUM_NODES)) \
  $(if $(NODE_RANK),--node-rank $(NODE_RANK)) $(foreach o,$(OPTS),-o $(o))
# make demo DATA=/path/to/imagenet-style WEIGHTS=/path/to.pth ARCH=mobilenet_v2
DATA    ?=
WEIGHTS ?=
ARCH    ?=
PYTEST_ARGS ?=
DEMO_ARGS ?=
# the trainer benchmarks: seconds of steady state timed per mode and column (at least 20)
BENCH_SECONDS   ?= 20
BENCH_GPU_MODES ?= finetune,expert-cached
BENCH_GPU_ARGS  ?=

SYSTEM_PACKAGES := libopenjp2-7

.PHONY: help install system-deps shards shards-paper test test-fast bench bench-gpu bench-serve demo demo-docs figures docs report clean

help: ## Show the targets and their variables
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'
	@echo
	@echo "  variables: CODEC=$(CODEC) Q=$(Q) SETTINGS=$(SETTINGS) SRC=$(SRC) SPLIT=$(SPLIT) OUT=$(OUT) JOBS=$(JOBS) SHARD_SIZE=$(SHARD_SIZE)"
	@echo "             LAYOUT ORDER SEED MAX_PIXELS BACKEND SCHEDULER NUM_NODES NODE_RANK LIMIT OPTS"
	@echo "             DATA=$(DATA) WEIGHTS=$(WEIGHTS) ARCH=$(ARCH)"

system-deps: ## Install the system libraries (libopenjp2 for glymur; python3-venv on Debian)
	@missing=""; \
	ldconfig -p 2>/dev/null | grep -q libopenjp2 || missing="$$missing libopenjp2-7"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "error: missing system packages:$$missing"; \
	    echo "       run: sudo apt-get install -y$$missing   (or the equivalent on your system)"; exit 1; \
	  fi; \
	fi

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

install: $(STAMP) ## Create .venv and install the project (the versions of constraints.txt)

shards: install ## Build shards + manifest: make shards CODEC=j2k Q=200 SRC=/data/imagenet SPLIT=val (or SETTINGS=a,b)
	@test -n "$(SRC)" || { echo "error: set SRC=/path/to/images (SRC/<split>/<class>/<image>)"; exit 2; }
	$(PY) -m pipeline shards $(if $(SETTINGS),--settings $(SETTINGS),--codec $(CODEC) $(if $(Q),--q $(Q))) \
	  $(if $(LAYOUT),--layout $(LAYOUT)) $(SHARDS_ARGS)

shards-paper: install ## The paper's nine settings + lossless in one pass, split layout: make shards-paper SRC=... SPLIT=train
	@test -n "$(SRC)" || { echo "error: set SRC=/path/to/images (SRC/<split>/<class>/<image>)"; exit 2; }
	$(PY) -m pipeline shards --settings $(PAPER_SETTINGS) --layout $(or $(LAYOUT),split) $(SHARDS_ARGS)

test: install ## Run the test suite (CPU; tests that need ../shared skip without it)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install ## The test suite without the tests marked slow
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# the benchmarks write their results files (benchmarks/results/*.json: numbers, command, environment);
# the docs' blocks are rendered from those files (docsgen/readme_block.py, the registry of every block:
# which page holds which block)
RESULTS := benchmarks/results
BLOCK   := $(PY) docsgen/readme_block.py

bench: install ## Benchmarks: pipeline, BPG codec, trainer, fp32 vs bf16; writes benchmarks/results/*.json, refreshes their tables in docs/
	@mkdir -p $(RESULTS)
	$(PY) benchmarks/bench_pipeline.py --images 384 --json $(RESULTS)/pipeline.json --scale-images 48 --scale-json $(RESULTS)/scale.json
	$(PY) benchmarks/bench_pipeline.py --images 96 --storage-only --json $(RESULTS)/storage.json
	$(BLOCK) pipeline scale storage
	@if [ -d ../shared/imagenette/train ]; then \
	  $(PY) benchmarks/bench_mixing.py --json $(RESULTS)/mixing.json && $(BLOCK) mixing; fi
	@if [ -f benchmarks/bench_bpg.py ]; then \
	  $(PY) benchmarks/bench_bpg.py --json $(RESULTS)/bpg.json && $(BLOCK) bpg bpg-bench; fi
	@if [ -x ../shared/bpg-genuine/bpgenc ] && [ -d ../shared/imagenette ]; then \
	  $(PY) benchmarks/bpg_tune.py --evaluate-only --json $(RESULTS)/bpg-tune.json && $(BLOCK) bpg-tuning; fi
	$(PY) benchmarks/bench_loader.py --seconds $(BENCH_SECONDS) --json $(RESULTS)/loader.json
	$(PY) benchmarks/bench_trainer.py --seconds $(BENCH_SECONDS) --json $(RESULTS)/trainer.json
	$(BLOCK) loader trainer
	$(PY) benchmarks/bench_precision.py --seconds $(BENCH_SECONDS) --json $(RESULTS)/precision.json
	$(BLOCK) precision

# make bench-gpu on a machine with a CUDA GPU: about 5 minutes (2 archs x 2 modes x 3 columns x 20 s, plus set-up);
# BENCH_GPU_MODES=finetune,expert-live,expert-cached adds the live teacher, BENCH_GPU_ARGS=--gpu-decode uses nvJPEG
bench-gpu: install ## Trainer throughput at steady state on a CUDA GPU (resnet50, mobilenet_v2); refreshes docs/benchmarks.md
	@mkdir -p $(RESULTS)
	$(PY) benchmarks/bench_trainer.py --device cuda --arch resnet50 --batch-size 64 --modes $(BENCH_GPU_MODES) \
	  --seconds $(BENCH_SECONDS) $(BENCH_GPU_ARGS) --json $(RESULTS)/trainer-gpu-resnet50.json
	$(PY) benchmarks/bench_trainer.py --device cuda --arch mobilenet_v2 --batch-size 64 --modes $(BENCH_GPU_MODES) \
	  --seconds $(BENCH_SECONDS) $(BENCH_GPU_ARGS) --json $(RESULTS)/trainer-gpu-mobilenet_v2.json
	$(BLOCK) trainer-gpu

# about 5 minutes: 3 points x 2 precisions x (BENCH_SECONDS + warm-up), the servers' start, the model alone at each mean batch
bench-serve: install ## m2m-serve at steady state (MobileNetV2, 1/8/32 clients, fp32 and bf16); writes $(RESULTS)/serve.json, refreshes docs/receiver.md
	@mkdir -p $(RESULTS)
	$(PY) benchmarks/bench_serve.py --seconds $(BENCH_SECONDS) --json $(RESULTS)/serve.json
	$(PY) benchmarks/bench_serve_stall.py --seconds $(BENCH_SECONDS) --json $(RESULTS)/serve-stall.json
	$(BLOCK) serve serve-stall

demo: install ## The whole flow on the embedded default (or DATA=... WEIGHTS=... ARCH=...)
	$(PY) -m demo $(if $(DATA),--data $(DATA)) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(ARCH),--arch $(ARCH)) $(DEMO_ARGS)

demo-docs: install ## Run the embedded demo: docs/demo-results.json, its README table and the plot
	$(PY) -m demo --readme $(DEMO_ARGS)

figures: install ## The docs' figures (docs/*.png) from the committed results files
	$(PY) experiments/figures.py --out docs

docs: install ## Every generated block of the docs (docs/cli.md included) and the figures
	$(BLOCK) --all
	$(PY) experiments/figures.py --out docs

report: install ## Table 1, Fig. 4/5 from runs/, shards/ and reports/results.json (PAPER=paper_table1.json to compare)
	$(PY) -m trainer.reports.report --runs runs/ --shards $(OUT) --results reports/results.json --out reports/ \
	  $(if $(PAPER),--paper $(PAPER)) $(if $(PAPER_ARCH),--paper-arch $(PAPER_ARCH))

clean: ## Remove outputs (shards/, runs/, bench-out/), keep .venv
	rm -rf shards runs bench-out reports
