# make demo  - the whole pipeline on the bundled synthetic demo (CPU, minutes)
# make test  - the test suite (CPU)
# Both create .venv from requirements.txt first if it is missing or out of date.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_CONFIG ?= configs/demo.yaml
DEMO_RUN    ?= weights/demo

.PHONY: demo test chaos lint clean-demo

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
	$(PY) plot_training_curves.py --run $(DEMO_RUN)
	$(PY) plot_training_curves.py --run weights/demo_round2
	@echo "demo done: weights/demo/ (round 1), weights/demo_round2/ (with diamonds); plots in */plots/report.html"

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff
	$(PY) -m ruff check .

chaos: $(STAMP)
	$(PY) -m pytest -q tests/test_chaos.py tests/test_training.py tests/test_align.py tests/test_fallback.py

clean-demo:
	rm -rf data/demo data/demo_faces_128 data/demo_diamonds.csv $(DEMO_RUN) weights/demo_round2
