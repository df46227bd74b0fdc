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

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff
	$(PY) -m ruff check .

clean-demo:
	rm -rf data/demo data/demo_faces_128 $(DEMO_RUN)
