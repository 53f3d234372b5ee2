# embedkit: `make demo` and `make test` each work on a fresh machine (they create .venv when missing).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test bench lint venv clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull gigabytes of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python -m embedkit.demo

# two workers (one per core); a test file stays on one worker so its module fixtures are built once
test: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: venv
	$(BIN)/python benchmarks/encode.py

lint: venv
	$(BIN)/ruff check embedkit tests benchmarks

clean:
	rm -rf $(VENV) demo-output .pytest_cache
