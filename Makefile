# make demo  - the whole pipeline on the bundled synthetic demo (CPU, minutes)
# make test  - the test suite (CPU)
# Both create .venv from requirements.txt first if it is missing or out of date.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_CONFIG ?= configs/demo.yaml
DEMO_RUN    ?= weights/demo

.PHONY: demo demo-audio test chaos lint clean-demo wheels gpu-wheels

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m deepfake_pipeline.demo_data --out data/demo --n 400 --seed 0
	$(PY) align_faces.py --config $(DEMO_CONFIG)
	$(PY) train.py --config $(DEMO_CONFIG) --stage all
	$(PY) -m deepfake_pipeline.score $(DEMO_RUN)/submission.csv data/demo/test_solution.csv --probs $(DEMO_RUN)/test_probs.csv
	$(PY) make_diamonds.py --config $(DEMO_CONFIG) --run $(DEMO_RUN) --out data/demo_diamonds.csv
	$(PY) train.py --config $(DEMO_CONFIG) --stage all --set run.name=demo_round2 \
	    --set data.pseudo_labels=data/demo_diamonds.csv --set ssl.enabled=false \
	    --set finetune.ssl_encoder=$(DEMO_RUN)/ssl/encoder.safetensors
	$(PY) -m deepfake_pipeline.score weights/demo_round2/submission.csv data/demo/test_solution.csv --probs weights/demo_round2/test_probs.csv
	$(PY) blend_runs.py --runs $(DEMO_RUN) weights/demo_round2 --out weights/demo_blend
	$(PY) -m deepfake_pipeline.score weights/demo_blend/submission.csv data/demo/test_solution.csv --probs weights/demo_blend/test_probs.csv
	$(PY) plot_training_curves.py --run $(DEMO_RUN)
	$(PY) plot_training_curves.py --run weights/demo_round2
	@echo "demo done: weights/demo/ (round 1), weights/demo_round2/ (with diamonds), weights/demo_blend/ (the two blended); plots in */plots/report.html"

# The speech path on a synthetic speech-like set: stage 1 (spectrogram windows), SSL, 3 folds grouped
# by speaker, per-clip prediction, diamonds, plots.
demo-audio: $(STAMP)
	$(PY) -m deepfake_pipeline.demo_audio --out data/demo_audio --n 200 --seed 0
	$(PY) prepare_audio.py --config configs/demo_audio.yaml
	$(PY) train.py --config configs/demo_audio.yaml --stage all
	$(PY) -m deepfake_pipeline.score weights/demo_audio/submission.csv data/demo_audio/test_solution.csv --probs weights/demo_audio/test_probs.csv
	$(PY) make_diamonds.py --config configs/demo_audio.yaml --run weights/demo_audio --out data/demo_audio_diamonds.csv --allow-empty
	$(PY) plot_training_curves.py --run weights/demo_audio
	@echo "demo-audio done: weights/demo_audio/ (submission.csv, plots/report.html)"

# Two pytest workers, each test file on one of them (module fixtures built once): the tests run one
# thread each (tests/conftest.py), so a 2-core machine runs two files at once (benchmarks/RESULTS.md,
# "make test wall time"). Files are handed out in collection order, longest first (conftest's
# LONGEST_FIRST): xdist's default reorders them by test count, which left a 2-minute file to run alone
# at the end. TEST_WORKERS=0 runs them in this process, one after another.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff
	$(PY) -m ruff check .

chaos: $(STAMP)
	$(PY) -m pytest -q tests/test_chaos.py tests/test_training.py tests/test_align.py tests/test_fallback.py

clean-demo:
	rm -rf data/demo data/demo_faces_128 data/demo_diamonds.csv $(DEMO_RUN) weights/demo_round2 weights/demo_blend
	rm -rf data/demo_audio data/demo_audio_128 data/demo_audio_diamonds.csv weights/demo_audio

# Offline installs (Kaggle notebooks with the internet off, the GPU check's machine): wheels of every
# dependency at the versions of .venv, except torch/torchvision and their CUDA libraries (already in
# such images), plus the project's own wheel (setuptools included: torch declares it, and a bare venv
# lacks it). Then, with no network:
#   pip install --no-index --find-links .whl deepfake-pipeline
WHEELS ?= .whl
EXCLUDE_WHEELS = '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|pip|ruff)=='
wheels: $(STAMP)
	rm -rf $(WHEELS) && mkdir -p $(WHEELS)
	$(PY) -m pip freeze --all --exclude-editable | grep -viE $(EXCLUDE_WHEELS) | grep '==' > $(WHEELS)/requirements.lock
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: -d $(WHEELS) -r $(WHEELS)/requirements.lock
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w $(WHEELS) .
	@echo "$$(ls $(WHEELS)/*.whl | wc -l) wheels in $(WHEELS): pip install --no-index --find-links $(WHEELS) deepfake-pipeline"

# What benchmarks/gpu_check.sh installs on a bare CUDA image (torch, torchvision, timm, PyYAML, OpenCV,
# pandas, scikit-learn are there), at the versions of .venv, for CPython 3.11 and 3.12 on x86-64 Linux:
# a few MiB, carried with the working tree to the GPU machine.
GPU_WHEELS = kornia kornia_rs facenet-pytorch omegaconf
gpu-wheels: $(STAMP)
	rm -rf .carry/wheels && mkdir -p .carry/wheels
	$(PY) -m pip freeze | grep -iE "^($$(echo $(GPU_WHEELS) | sed 's/ /|/g; s/[-_]/[-_]/g'))==" > .carry/wheels/requirements.lock
	for v in 3.11 3.12; do $(PY) -m pip download --quiet --no-deps --only-binary=:all: \
	    --python-version $$v --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
	    -d .carry/wheels -r .carry/wheels/requirements.lock || exit 1; done
	du -sh .carry/wheels
