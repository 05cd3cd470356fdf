PYTHON ?= python3
# The CPU wheel used here and in CI.  A GPU user installs their own CUDA torch first;
# `make install` then keeps it (any torch >= 2.4 satisfies the package).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install run test bench bench-full bench-size gpu-check world-base study study-quick study-lr

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[dev]"

# The main job: the embedded demo (the committed world base learns `sks` with DEFT, ~2-3 min on CPU).
run: install
	$(PYTHON) -m deft_omni.train

# The shapes world: rebuild the committed base (VAE + transformer from scratch, judged), ~55 min on 2 cores.
world-base: install
	$(PYTHON) -m deft_omni.world.build

# The retention study (DEFT qr / relu, LoRA, PaRa; r = 8; 3 seeds) and its report; --quick: 1 seed, shorter.
STUDY ?= runs/study
study: install
	$(PYTHON) -m deft_omni.study --out $(STUDY) && $(PYTHON) -m deft_omni.report $(STUDY)
study-quick: install
	$(PYTHON) -m deft_omni.study --out $(STUDY)-quick --quick && $(PYTHON) -m deft_omni.report $(STUDY)-quick
study-lr: install
	$(PYTHON) -m deft_omni.study --out runs/lr_search --lr-search

test: install
	$(PYTHON) -m pytest -q tests

bench: install
	$(PYTHON) benchmarks/adapters.py

bench-full: install
	$(PYTHON) benchmarks/adapters.py --full --json benchmarks/results/full.json

# Full-size OmniGen: GPU memory and step time predicted from CPU measurements (~25 min; --quick ~3).
bench-size: install
	nice -n 5 $(PYTHON) -m benchmarks.full_size

# On a GPU machine: the full 32 layers at 1024 px, measured beside the prediction (~2-4 min).
gpu-check: install
	$(PYTHON) -m benchmarks.full_size.gpu_check

# ------------------------------------------------------------------------------ prepare-*
# Data converters (data_prep/): public data sets in their own layouts -> webdataset shards
# + manifest.json.  Each writes $(OUT)/<name>/train, the folder the experiment of the same
# name reads as ${oc.env:DEFT_OMNI_DATA,data}/<name>/train, so
#   make prepare-insdet INSDET_ROOT=/datasets/InsDet OUT=/datasets/deft
#   DEFT_OMNI_DATA=/datasets/deft python -m deft_omni.train experiment=insdet_objects model.path=...
# Extra converter options: PREP_ARGS="--max-side 768 --overwrite" (see python -m data_prep.<module> -h).
OUT ?= data
WORKERS ?= 4
PREP_ARGS ?=
JSONL ?=
JSONL_IMAGES ?=
JSONL_NAME ?= omnigen
INSDET_ROOT ?=
COLMAP_ROOT ?=
GRAPH200K_ROOT ?=
DREAMBOOTH_ROOT ?=
DREAMBENCH_ROOT ?=
PREP = $(PYTHON) -m data_prep

.PHONY: prepare-jsonl prepare-insdet prepare-colmap prepare-visualcloze prepare-dreambooth prepare-dreambench

# $(call need,VAR,what it is)
need = @test -n "$($(1))" || { echo "set $(1)=<$(2)>, e.g. make $@ $(1)=/path OUT=data" >&2; exit 2; }

# OmniGen fine-tuning JSONL (JSONL=file.jsonl, JSONL_IMAGES=the folder its paths are relative to).
prepare-jsonl:
	$(call need,JSONL,an OmniGen JSONL file)
	$(PREP).omnigen_jsonl --jsonl $(JSONL) $(if $(JSONL_IMAGES),--images $(JSONL_IMAGES)) \
		--out $(OUT)/$(JSONL_NAME)/train --workers $(WORKERS) $(PREP_ARGS)

# InsDet: object views -> insdet_objects, scene photos (+ object crops) -> insdet_scenes.
prepare-insdet:
	$(call need,INSDET_ROOT,the InsDet folder holding Objects/ Scenes/ Background/)
	$(PREP).insdet objects --root $(INSDET_ROOT) --out $(OUT)/insdet_objects/train --workers $(WORKERS) $(PREP_ARGS)
	$(PREP).insdet scenes --root $(INSDET_ROOT) --out $(OUT)/insdet_scenes/train --workers $(WORKERS) $(PREP_ARGS)

# A COLMAP scene (sparse/0/ + images/) -> sfm_camera.
prepare-colmap:
	$(call need,COLMAP_ROOT,a COLMAP scene folder holding sparse/0 and images)
	$(PREP).colmap --root $(COLMAP_ROOT) --out $(OUT)/sfm_camera/train --workers $(WORKERS) $(PREP_ARGS)

# Graph200K (save_to_disk copy or VisualCloze's folder export) -> visualcloze/{train,test}.
prepare-visualcloze:
	$(call need,GRAPH200K_ROOT,the Graph200K save_to_disk folder or folder export)
	$(PREP).visualcloze --root $(GRAPH200K_ROOT) --split train --out $(OUT)/visualcloze/train --workers $(WORKERS) $(PREP_ARGS)
	$(PREP).visualcloze --root $(GRAPH200K_ROOT) --split test --out $(OUT)/visualcloze/test --workers $(WORKERS) $(PREP_ARGS)

# DreamBooth (google/dreambooth checkout) -> dreambooth (+ eval_prompts.json).
prepare-dreambooth:
	$(call need,DREAMBOOTH_ROOT,the google/dreambooth checkout or its dataset/ folder)
	$(PREP).dreambooth dreambooth --root $(DREAMBOOTH_ROOT) --out $(OUT)/dreambooth/train --workers $(WORKERS) $(PREP_ARGS)

# DreamBench++ (the folder holding data/images and data/captions) -> dreambench_plus (+ eval_prompts.json).
prepare-dreambench:
	$(call need,DREAMBENCH_ROOT,the DreamBench++ folder holding data/)
	$(PREP).dreambooth dreambench --root $(DREAMBENCH_ROOT) --out $(OUT)/dreambench_plus/train --workers $(WORKERS) $(PREP_ARGS)
