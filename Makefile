# udaseg: every target runs through the local virtual environment in .venv, which the first
# target that needs it creates (torch + torchvision, ~5 GB, a few minutes). Every pipeline
# stage is a file target, so `make` reruns only what is missing or older than its inputs.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
UDASEG := $(VENV)/bin/udaseg
STAMP  := $(VENV)/.installed

# DATA: the built-in benchmark; RUNS: every run's artifacts, $(RUNS)/<experiment name>/;
# DATASETS: the real datasets (make syn2city16 DATASETS=/data); INIT: ImageNet init weights
# (default: the recipe's model.init_weights under DATASETS)
DATA     ?= data
RUNS     ?= runs
DATASETS ?= $(UDASEG_DATA)
INIT     ?=

.PHONY: help install test gpu-check demo demo-data check-demo clean-demo ablation selection require-datasets \
        syn2city16 syn2city16-low syn2city7 syn2city7-low syn2map7 syn2map7-low

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "  variables: DATA=$(DATA) RUNS=$(RUNS) DATASETS=$(DATASETS) INIT=$(INIT) RECIPE=$(RECIPE) SEEDS=\"$(SEEDS)\""

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -e ".[test,export,tb,video]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install udaseg with its dependencies

test: $(STAMP)  ## run the test suite (CPU, tiny images; a few minutes)
	$(PY) -m pytest tests

# ---- every CUDA path proved and timed in one command (< 8 min on a GPU; CPU: correctness subset) --
# No install step: PYTHON_GPU is any interpreter holding torch, triton, scipy, ... (the package is
# imported from this tree). Report: $(GPU_REPORT_DIR)/gpu_report.md and .json. See bench/gpu_check.py.
PYTHON_GPU     ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_REPORT_DIR ?= runs/gpu-check

gpu-check:  ## prove + time every CUDA path in < 8 min (PYTHON_GPU=python3 on a GPU machine; CPU: subset)
	GPU_REPORT_DIR=$(GPU_REPORT_DIR) $(PYTHON_GPU) bench/gpu_check.py

# ---- one pipeline: fit-gmm -> train -> pseudolabel --refine -> self-train -> eval ----------
# $(1) target name, $(2) recipe (stages/$(2).toml), $(3) run name, $(4) extra options,
# $(5) data prerequisite (a file), $(6) order-only prerequisite (a check)
define PIPELINE
$(RUNS)/$(3)/gmm/gmm.h5: stages/$(2).toml $(5) | $(STAMP) $(6)
	$(UDASEG) fit-gmm --config stages/$(2).toml $(4)

$(RUNS)/$(3)/train/checkpoint_final.pt: $(RUNS)/$(3)/gmm/gmm.h5
	rm -rf $(RUNS)/$(3)/train
	$(UDASEG) train --config stages/$(2).toml $(4)

$(RUNS)/$(3)/pseudo/stats.json: $(RUNS)/$(3)/train/checkpoint_final.pt
	rm -rf $(RUNS)/$(3)/pseudo
	$(UDASEG) pseudolabel --config stages/$(2).toml $(4) --refine --color

$(RUNS)/$(3)/self_train/checkpoint_final.pt: $(RUNS)/$(3)/pseudo/stats.json
	rm -rf $(RUNS)/$(3)/self_train
	$(UDASEG) self-train --config stages/$(2).toml $(4)

$(RUNS)/$(3)/eval/summary.json: $(RUNS)/$(3)/self_train/checkpoint_final.pt
	$(UDASEG) eval --config stages/$(2).toml $(4)

$(1): $(RUNS)/$(3)/eval/summary.json
	@cat $(RUNS)/$(3)/eval/report.md
	@echo "report: $(RUNS)/$(3)/eval/report.md   figures: $(RUNS)/$(3)/eval/*.png"
endef

# ---- the built-in synthetic benchmark -----------------------------------------------------
DEMO_ARGS := --data-root $(DATA) --runs-root $(RUNS)

$(DATA)/demo/synth.json: | $(STAMP)
	$(UDASEG) synth $(DATA)/demo --overwrite

demo-data: $(DATA)/demo/synth.json  ## generate the synthetic benchmark into DATA/demo

check-demo: demo-data  ## check the synthetic benchmark's files
	$(UDASEG) check-data --config stages/demo.toml $(DEMO_ARGS)

$(eval $(call PIPELINE,demo,demo,demo,$(DEMO_ARGS),$(DATA)/demo/synth.json))
demo:  ## the whole pipeline on the synthetic benchmark (CPU, light backbone, < 15 min)

clean-demo:  ## remove the synthetic benchmark and its runs
	rm -rf $(DATA)/demo $(RUNS)/demo

# ---- the paper's settings on the real datasets ------------------------------------------
PAPER_ARGS = --data-root $(DATASETS) --runs-root $(RUNS) $(if $(INIT),--set model.init_weights='"$(INIT)"')

require-datasets:
	@if [ -z "$(strip $(DATASETS))" ] || [ ! -d "$(strip $(DATASETS))" ]; then \
	  echo "error: set DATASETS=/path/to/datasets (or UDASEG_DATA) holding SYNTHIA-RAND-CITYSCAPES/, cityscapes/, mapillary/; see README 'Dataset preparation'"; exit 1; fi

$(eval $(call PIPELINE,syn2city16,synthia2cityscapes16,synthia2cityscapes16,$(PAPER_ARGS),,require-datasets))
$(eval $(call PIPELINE,syn2city16-low,synthia2cityscapes16_low,synthia2cityscapes16_low,$(PAPER_ARGS),,require-datasets))
$(eval $(call PIPELINE,syn2city7,synthia2cityscapes7,synthia2cityscapes7,$(PAPER_ARGS),,require-datasets))
$(eval $(call PIPELINE,syn2city7-low,synthia2cityscapes7_low,synthia2cityscapes7_low,$(PAPER_ARGS),,require-datasets))
$(eval $(call PIPELINE,syn2map7,synthia2mapillary7,synthia2mapillary7,$(PAPER_ARGS),,require-datasets))
$(eval $(call PIPELINE,syn2map7-low,synthia2mapillary7_low,synthia2mapillary7_low,$(PAPER_ARGS),,require-datasets))
syn2city16:  ## SYNTHIA -> Cityscapes 16 classes (DATASETS=..., INIT=...; one GPU)
syn2city16-low:  ## the same at 640x320
syn2city7:  ## SYNTHIA -> Cityscapes 7 classes
syn2city7-low:  ## the same at 640x320
syn2map7:  ## SYNTHIA -> Mapillary Vistas 7 classes
syn2map7-low:  ## the same at 640x320

# ---- paper Tables 1 + 3 on the synthetic benchmark: make -j2 ablation SEEDS="0 1 2" ------
# source_only / advent / dada / m1 / m2 / oracle are train runs; m3 and m4 self-train from m2's checkpoint
# (m2_entropy, M2's losses with F̂ = entropy, is a `make selection` arm: ABL_STAGE1="... m2_entropy" adds it here)
# on pseudo-labels without / with the spatial prior. One gmm.h5 serves every run.
# RECIPE=demo16 runs the same table with the 16-class recipe.
RECIPE   ?= demo
ABL      := $(RUNS)/ablation/$(RECIPE)
SEEDS    ?= 0 1 2
ABL_ARGS := --config stages/$(RECIPE).toml --data-root $(DATA) --runs-root $(ABL)

$(ABL)/shared/gmm/gmm.h5: $(DATA)/demo/synth.json stages/$(RECIPE).toml | $(STAMP)
	$(UDASEG) fit-gmm $(ABL_ARGS) --set experiment.name=shared --no-plots

# $(1) setting, $(2) seed
define ABLATION_STAGE1
$(ABL)/$(1)_s$(2)/train/checkpoint_final.pt: $(ABL)/shared/gmm/gmm.h5
	rm -rf $(ABL)/$(1)_s$(2) && mkdir -p $(ABL)/$(1)_s$(2)/gmm && cp $$< $(ABL)/$(1)_s$(2)/gmm/
	$(UDASEG) train $(ABL_ARGS) --set experiment.name=$(1)_s$(2) --set experiment.seed=$(2) --ablation $(1)
$(ABL)/$(1)_s$(2)/eval/summary.json: $(ABL)/$(1)_s$(2)/train/checkpoint_final.pt
	$(UDASEG) eval $(ABL_ARGS) --set experiment.name=$(1)_s$(2) --checkpoint best --name best --label '$(1) (best on val)'
	$(UDASEG) eval $(ABL_ARGS) --set experiment.name=$(1)_s$(2) --checkpoint final --label $(1)
endef

# $(1) setting (m3 | m4), $(2) seed, $(3) --refine / --no-refine
define ABLATION_STAGE2
$(ABL)/$(1)_s$(2)/self_train/checkpoint_final.pt: $(ABL)/m2_s$(2)/train/checkpoint_final.pt
	rm -rf $(ABL)/$(1)_s$(2) && mkdir -p $(ABL)/$(1)_s$(2)/gmm && cp $(ABL)/shared/gmm/gmm.h5 $(ABL)/$(1)_s$(2)/gmm/
	$(UDASEG) pseudolabel $(ABL_ARGS) --set experiment.name=$(1)_s$(2) --checkpoint $$< $(3)
	$(UDASEG) self-train $(ABL_ARGS) --set experiment.name=$(1)_s$(2) --set experiment.seed=$(2) --checkpoint $$<
$(ABL)/$(1)_s$(2)/eval/summary.json: $(ABL)/$(1)_s$(2)/self_train/checkpoint_final.pt
	$(UDASEG) eval $(ABL_ARGS) --set experiment.name=$(1)_s$(2) --checkpoint best --name best --label '$(1) (best on val)'
	$(UDASEG) eval $(ABL_ARGS) --set experiment.name=$(1)_s$(2) --checkpoint final --label $(1)
endef

ABL_STAGE1 ?= source_only advent dada m1 m2 oracle
$(foreach s,$(SEEDS),$(foreach x,$(ABL_STAGE1),$(eval $(call ABLATION_STAGE1,$(x),$(s)))))
$(foreach s,$(SEEDS),$(eval $(call ABLATION_STAGE2,m3,$(s),--no-refine)))
$(foreach s,$(SEEDS),$(eval $(call ABLATION_STAGE2,m4,$(s),--refine)))
ABL_SUMMARIES := $(foreach s,$(SEEDS),$(foreach x,$(ABL_STAGE1) m3 m4,$(ABL)/$(x)_s$(s)/eval/summary.json))
ABL_RESULTS   ?= results/ablation_$(RECIPE).json
# each run is scored twice: its final checkpoint (eval/) and its best on the target val (eval/best/, train.eval_every):
# the table has both rows; best-on-val is model selection on target labels, final the clean number
ABL_BEST      := $(subst /eval/summary.json,/eval/best/summary.json,$(ABL_SUMMARIES))

ablation: $(ABL_SUMMARIES)  ## paper Tables 1 + 3 on the synthetic benchmark, mean ± std over SEEDS (make -j2; RECIPE=demo16)
	@mkdir -p $(dir $(ABL_RESULTS))
	$(UDASEG) compare $(ABL_SUMMARIES) $(ABL_BEST) --out $(ABL)/table.md --json $(ABL_RESULTS)

# ---- the density-collapse selection experiments (RESULTS.md, "Selection"): stage 1 only ----------
# make -j2 selection SEEDS="0 1 2": each arm is the recipe's m2 (or dada) with one switch changed;
# results in results/selection_$(RECIPE).json. Never run these on the confirmation seeds.
SEL      := $(RUNS)/selection/$(RECIPE)
SEL_ARGS := --config stages/$(RECIPE).toml --data-root $(DATA) --runs-root $(SEL)
SEL_ARMS ?= m1 m2_live m2_detached m2_auxlr1 m2_nodecay m2_entropy dada_live dada_unit
ARM_m2_live     := --ablation m2 --set train.adv_density_grad=live
ARM_m2_detached := --ablation m2 --set train.adv_density_grad=detached
ARM_m2_auxlr1   := --ablation m2 --set train.adv_density_grad=live --set train.aux_head_lr_mult=1.0
ARM_m2_nodecay  := --ablation m2 --set train.adv_density_grad=live --set train.aux_head_decay_mult=0.0
ARM_m2_entropy  := --ablation m2_entropy
ARM_m1          := --ablation m1
ARM_dada_live   := --ablation dada_simple --set train.adv_depth=raw
ARM_dada_unit   := --ablation dada_simple --set train.adv_depth=unit

$(SEL)/shared/gmm/gmm.h5: $(DATA)/demo/synth.json stages/$(RECIPE).toml | $(STAMP)
	$(UDASEG) fit-gmm $(SEL_ARGS) --set experiment.name=shared --no-plots

# $(1) arm, $(2) seed
define SELECTION_ARM
$(SEL)/$(1)_s$(2)/eval/summary.json: $(SEL)/shared/gmm/gmm.h5
	rm -rf $(SEL)/$(1)_s$(2) && mkdir -p $(SEL)/$(1)_s$(2)/gmm && cp $$< $(SEL)/$(1)_s$(2)/gmm/
	$(UDASEG) train $(SEL_ARGS) --set experiment.name=$(1)_s$(2) --set experiment.seed=$(2) $(ARM_$(1))
	$(UDASEG) eval $(SEL_ARGS) --set experiment.name=$(1)_s$(2) --checkpoint final --label $(1)
endef
$(foreach s,$(SEEDS),$(foreach a,$(SEL_ARMS),$(eval $(call SELECTION_ARM,$(a),$(s)))))
SEL_SUMMARIES := $(foreach s,$(SEEDS),$(foreach a,$(SEL_ARMS),$(SEL)/$(a)_s$(s)/eval/summary.json))

selection: $(SEL_SUMMARIES)  ## the density-collapse selection arms (stage 1) over SEEDS (make -j2; RESULTS.md)
	@mkdir -p results
	$(UDASEG) compare $(SEL_SUMMARIES) --out $(SEL)/table.md --json results/selection_$(RECIPE).json
