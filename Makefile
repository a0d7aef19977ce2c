# kneeplan: every target creates .venv and installs into it on first use (stamp file).
# On a CUDA node override the torch requirement, e.g.  make train TORCH="torch==2.13.0 --index-url ..."
SHELL := /bin/bash
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kneeplan-installed

export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

# Training / data knobs (all optional).
CONFIG ?=
DATA ?=
DEVICES ?=
NODES ?=
RESUME ?=
ARGS ?=
# Phantom generation.
OUT ?= data/phantoms
N ?= 200
SEED ?= 0
# Sweeps.
TRIALS ?= 4
STORAGE ?=
STUDY ?= kneeplan
# Leave-one-factor-out protocol (make generalisation MINUTES=30 FACTORS=metal,collimation).
MINUTES ?= 30
FACTORS ?= physics,processing,pose,metal,calibration,collimation
LOFO_OUT ?= runs/generalisation
# Evaluation / planning.
CKPT ?=
IMAGE ?=

.PHONY: help venv test test-fast lint train sweep sweep-report phantoms phantoms-sheet \
        validate-data evaluate plan bench clean generalisation

help:
	@echo "make train | test | sweep | sweep-report | phantoms | phantoms-sheet | validate-data DATA=..."
	@echo "make evaluate CKPT=... [DATA=...] | plan IMAGE=... CKPT=... | bench | lint"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

train: $(STAMP)
	$(PY) -m lightning_modules.train \
	  $(if $(CONFIG),--config $(CONFIG)) $(if $(DATA),--data-root $(DATA)) \
	  $(if $(DEVICES),--devices $(DEVICES)) $(if $(NODES),--num-nodes $(NODES)) \
	  $(if $(RESUME),--resume $(RESUME)) $(ARGS)

sweep: $(STAMP)
	$(PY) -m sweeps.run --trials $(TRIALS) --study $(STUDY) \
	  $(if $(STORAGE),--storage $(STORAGE)) $(if $(CONFIG),--config $(CONFIG)) \
	  $(if $(DATA),--data-root $(DATA)) $(ARGS)

sweep-report: $(STAMP)
	$(PY) -m sweeps.report --study $(STUDY) $(if $(STORAGE),--storage $(STORAGE)) $(ARGS)

phantoms: $(STAMP)
	$(PY) -m datamodules.phantoms --out $(OUT) --n $(N) --seed $(SEED)

phantoms-sheet: $(STAMP)
	$(PY) -m datamodules.phantoms.sheet --out docs/phantoms_sheet.png --seed $(SEED)

validate-data: $(STAMP)
	@test -n "$(DATA)" || (echo "usage: make validate-data DATA=path/to/dataset" && exit 2)
	$(PY) -m datamodules.validate $(DATA)

evaluate: $(STAMP)
	$(PY) -m planning.evaluate $(if $(CKPT),--ckpt $(CKPT)) $(if $(DATA),--data-root $(DATA)) $(ARGS)

generalisation: $(STAMP)
	$(PY) -m planning.generalisation --minutes $(MINUTES) --factors $(FACTORS) --out $(LOFO_OUT) \
	  $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

plan: $(STAMP)
	@test -n "$(IMAGE)" -a -n "$(CKPT)" || (echo "usage: make plan IMAGE=... CKPT=..." && exit 2)
	$(PY) -m planning.plan --image $(IMAGE) --ckpt $(CKPT) $(ARGS)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
