# mlmon: `make run` sets up and opens the app on the sample data; `make test` sets up and tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast sample bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

sample_data/data/predictions: | $(STAMP)
	$(BIN)/mlmon demo --out sample_data

sample: sample_data/data/predictions

PORT ?= 8501
run: $(STAMP) sample
	$(BIN)/mlmon app --config sample_data/mlmon.toml --port $(PORT) $(if $(HEADLESS),--headless,)

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not browser and not slow"

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) sample_data/data
