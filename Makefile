# kneeplan: every target but help and clean creates .venv and installs into it on first use (stamp file).
# On a CUDA node override the torch requirement, e.g.  make train TORCH="torch==2.13.0 --index-url ..."
SHELL := /bin/bash
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kneeplan-installed

export NO_ALBUMENTATIONS_UPDATE := 1
# W&B's mode is not exported here: training sets WANDB_MODE from run.wandb_mode (offline by
# default) unless it is set already, so ARGS="--run.wandb_mode online" is not overridden
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
ONNX ?=
WORKERS ?=
# LabelMe import (make import-labelme LABELME=annotated/ DATA=data/mine).
LABELME ?=

# $(call q,VALUE): VALUE as one shell word in single quotes (spaces, non-ASCII, " and ' survive),
# so IMAGE="a b ü.png" reaches the program as one argument. make itself expands a $ in a variable
# given on its command line: write $$ for a literal $. ARGS stays unquoted: it holds several
# arguments.
q = '$(subst ','\'',$(1))'

.PHONY: help venv test test-fast lint train sweep sweep-report phantoms phantoms-sheet \
        validate-data import-labelme evaluate compare plan export bench clean generalisation

help:
	@echo "make train | test | sweep | sweep-report | phantoms | phantoms-sheet | validate-data DATA=..."
	@echo "make import-labelme LABELME=folder DATA=new-folder [ARGS='--images dicom/ --spacing-mm 0.15']"
	@echo "make evaluate CKPT=... [DATA=...] | plan IMAGE=file|folder|'glob' CKPT=.ckpt|.onnx"
	@echo "make compare A=eval-folder B=eval-folder (two models, same test set)"
	@echo "make export CKPT=... [ONNX=out.onnx] | bench | lint | test-fast (no slow tests)"
	@echo "make generalisation [MINUTES=30] [FACTORS=...] | venv (create .venv only) | clean"

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
	  $(if $(CONFIG),--config $(call q,$(CONFIG))) $(if $(DATA),--data-root $(call q,$(DATA))) \
	  $(if $(DEVICES),--devices $(call q,$(DEVICES))) \
	  $(if $(NODES),--num-nodes $(call q,$(NODES))) \
	  $(if $(RESUME),--resume $(call q,$(RESUME))) $(ARGS)

# (not echoed: STORAGE may hold a database password; the programs print it masked)
sweep: $(STAMP)
	@$(PY) -m sweeps.run --trials=$(call q,$(TRIALS)) --study=$(call q,$(STUDY)) \
	  $(if $(STORAGE),--storage $(call q,$(STORAGE))) $(if $(CONFIG),--config $(call q,$(CONFIG))) \
	  $(if $(DATA),--data-root $(call q,$(DATA))) $(ARGS)

sweep-report: $(STAMP)
	@$(PY) -m sweeps.report --study=$(call q,$(STUDY)) \
	  $(if $(STORAGE),--storage $(call q,$(STORAGE))) $(ARGS)

phantoms: $(STAMP)
	$(PY) -m datamodules.phantoms --out $(call q,$(OUT)) --n $(call q,$(N)) --seed $(call q,$(SEED))

phantoms-sheet: $(STAMP)
	$(PY) -m datamodules.phantoms.sheet --out docs/phantoms_sheet.png --seed $(call q,$(SEED))

validate-data: $(STAMP)
	@test -n $(call q,$(DATA)) || (echo "usage: make validate-data DATA=path/to/dataset" >&2 && exit 2)
	$(PY) -m datamodules.validate $(call q,$(DATA)) $(ARGS)

import-labelme: $(STAMP)
	@test -n $(call q,$(LABELME)) -a -n $(call q,$(DATA)) || (echo "usage: make import-labelme LABELME=folder DATA=new-dataset-folder [ARGS=...]" >&2 && exit 2)
	$(PY) -m datamodules.labelme_import $(call q,$(LABELME)) $(call q,$(DATA)) $(ARGS)

evaluate: $(STAMP)
	$(PY) -m planning.evaluate $(if $(CKPT),--ckpt $(call q,$(CKPT))) \
	  $(if $(DATA),--data-root $(call q,$(DATA))) $(ARGS)

compare: $(STAMP)
	@test -n $(call q,$(A)) -a -n $(call q,$(B)) || \
	  (echo "usage: make compare A=runs/evaluate/<model A> B=runs/evaluate/<model B>" >&2 && exit 2)
	$(PY) -m planning.compare $(call q,$(A)) $(call q,$(B)) $(ARGS)

generalisation: $(STAMP)
	$(PY) -m planning.generalisation --minutes $(call q,$(MINUTES)) --factors $(call q,$(FACTORS)) \
	  --out $(call q,$(LOFO_OUT)) $(if $(CONFIG),--config $(call q,$(CONFIG))) $(ARGS)

plan: $(STAMP)
	@test -n $(call q,$(IMAGE)) -a -n $(call q,$(CKPT)) || \
	  (echo "usage: make plan IMAGE=... CKPT=..." >&2 && exit 2)
	$(PY) -m planning.plan --image $(call q,$(IMAGE)) --ckpt $(call q,$(CKPT)) \
	  $(if $(WORKERS),--workers $(call q,$(WORKERS))) $(ARGS)

export: $(STAMP)
	@test -n $(call q,$(CKPT)) || \
	  (echo "usage: make export CKPT=path/to/last.ckpt [ONNX=out.onnx]" >&2 && exit 2)
	$(PY) -m planning.export --ckpt $(call q,$(CKPT)) $(if $(ONNX),--out $(call q,$(ONNX))) $(ARGS)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
