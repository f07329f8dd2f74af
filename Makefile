# Two entry points: `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The main job: BadNets on real Fashion-MNIST, stolen with Knockoff (soft and hard labels),
# at the `quick` profile (a few minutes on a 2-core CPU), then the paper-style tables.
demo: $(STAMP)
	$(BIN)/wmbench run --methods badnets --attacks none,knockoff --datasets fmnist --profile quick
	$(BIN)/wmbench report results/fmnist-quick --compare paper

test: $(STAMP)
	PYTHONSAFEPATH=1 $(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache
