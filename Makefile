# Two commands do all set-up on a fresh machine:
#   make run    - install into .venv and run a short local meta-training (Ray started in-process)
#   make test   - install into .venv and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install run test test-slow eval clean

$(BIN)/metarl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch>=2.2 is the real requirement; prefer the local CPU build 2.13.0 when no torch is present
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "torch==2.13.0" || true
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/metarl

install: $(BIN)/metarl

run: install
	$(BIN)/metarl train --env_name ML1 --task reach-v3 --test_mode --num_epochs 3 --run_name quickstart-$$(date +%Y%m%d-%H%M%S)

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
