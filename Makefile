# udaseg — every target runs through the local virtual environment in .venv,
# which the first target that needs it creates (torch + torchvision, ~5 GB, a few minutes).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
UDASEG := $(VENV)/bin/udaseg
STAMP  := $(VENV)/.installed

# Where data and runs go (override: make demo DATA=/big/disk/data RUNS=/big/disk/runs)
DATA ?= data
RUNS ?= runs
export UDASEG_RUNS := $(RUNS)

.PHONY: help install test demo demo-data check-demo clean-demo

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install udaseg with its dependencies

test: $(STAMP)  ## run the test suite (CPU, tiny images; a few minutes)
	$(PY) -m pytest tests

# ---- the built-in synthetic benchmark: every stage is a file target, so `make demo`
# ---- reruns only what is missing or older than its inputs
DEMO_DATA := $(DATA)/demo
DEMO_RUN  := $(RUNS)/demo
DEMO      := --config stages/demo.toml --data-root $(DATA) --runs-root $(RUNS)

$(DEMO_DATA)/synth.json: | $(STAMP)
	$(UDASEG) synth $(DEMO_DATA) --overwrite

$(DEMO_RUN)/gmm/gmm.h5: $(DEMO_DATA)/synth.json stages/demo.toml
	$(UDASEG) fit-gmm $(DEMO)

$(DEMO_RUN)/train/checkpoint_final.pt: $(DEMO_RUN)/gmm/gmm.h5
	rm -rf $(DEMO_RUN)/train
	$(UDASEG) train $(DEMO)

$(DEMO_RUN)/pseudo/stats.json: $(DEMO_RUN)/train/checkpoint_final.pt
	rm -rf $(DEMO_RUN)/pseudo
	$(UDASEG) pseudolabel $(DEMO) --refine --color

$(DEMO_RUN)/self_train/checkpoint_final.pt: $(DEMO_RUN)/pseudo/stats.json
	rm -rf $(DEMO_RUN)/self_train
	$(UDASEG) self-train $(DEMO)

$(DEMO_RUN)/eval/summary.json: $(DEMO_RUN)/self_train/checkpoint_final.pt
	$(UDASEG) eval $(DEMO)

demo-data: $(DEMO_DATA)/synth.json  ## generate the synthetic benchmark into $(DATA)/demo

check-demo: demo-data  ## check the synthetic benchmark's files
	$(UDASEG) check-data $(DEMO)

demo: $(DEMO_RUN)/eval/summary.json  ## the whole pipeline on the synthetic benchmark (CPU, light backbone)
	@cat $(DEMO_RUN)/eval/report.md
	@echo "report: $(DEMO_RUN)/eval/report.md   figures: $(DEMO_RUN)/eval/*.png   summary: $(DEMO_RUN)/eval/summary.json"

clean-demo:  ## remove the synthetic benchmark and its runs
	rm -rf $(DEMO_DATA) $(DEMO_RUN)
