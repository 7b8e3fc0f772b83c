# Two commands do all set-up on a fresh machine:
#   make run    - install into .venv and run a short local meta-training (Ray started in-process)
#   make test   - install into .venv and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install run lint test test-slow eval clean

$(BIN)/metarl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch>=2.2 is the real requirement; prefer the local CPU build 2.13.0 when no torch is present
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "torch==2.13.0" || true
	$(BIN)/pip install --quiet -e ".[dev]"
	# metarl render needs a headless OpenGL: OSMesa (software) from the system's packages when we may install it
	@ldconfig -p 2>/dev/null | grep -q libOSMesa || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing libosmesa6 (software OpenGL for metarl render)"; \
	    apt-get install -y -qq libosmesa6 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libosmesa6 >/dev/null; }; \
	  else echo "note: metarl render needs OSMesa (Debian/Ubuntu: sudo apt-get install libosmesa6) or MUJOCO_GL=egl on a GPU"; fi; }
	touch $(BIN)/metarl

install: $(BIN)/metarl

run: install
	$(BIN)/metarl train --env_name ML1 --task reach-v3 --test_mode --num_epochs 3 --run_name quickstart-$$(date +%Y%m%d-%H%M%S)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
