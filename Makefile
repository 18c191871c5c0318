# distill: `make demo` runs the whole workflow, `make test` runs the tests.
# Both set up everything they need first (virtualenv, package, data).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOWEST := .venv-lowest
NEWEST := .venv-newest
# jax 0.11 needs Python >= 3.12, so the newest stack pyproject.toml allows is tested on the first
# python3.12 or python3.13 found on PATH or in pyenv (the GPU machine runs 3.12).
PYTHON_NEWEST ?= $(shell for v in 3.12 3.13; do \
  PYENV_VERSION=$$(pyenv latest $$v 2>/dev/null) python$$v -c 'import sys; print(sys.executable)' \
  2>/dev/null && break; done)
PYTHON_NEWEST := $(PYTHON_NEWEST)
DEMO_DIR := runs/demo
# The demo's students train two at a time, one core each, where there are two cores or more:
# small students use a second core poorly (BENCHMARKS.md, "Sweeps on several cores"). Where JAX
# finds a GPU the sweep trains them one at a time instead.
DEMO_JOBS ?= $(shell [ "$$(nproc 2>/dev/null || echo 1)" -ge 2 ] && echo 2 || echo 1)
# Two pytest processes (pytest-xdist), each test file on one of them so its module fixtures are
# built once: most of a test is compiling or Python, which one core runs at a time.
PYTEST_WORKERS ?= -n 2 --dist loadfile
export KERAS_BACKEND := jax

.PHONY: install data browser demo teacher student test test-lowest test-newest bench clean

$(BIN)/distill: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,onnx]'
	touch $@

install: $(BIN)/distill ## Create .venv and install distill with its test tools and ONNX export.

data: ## Install Fashion-MNIST from Debian when we can (root + apt), else leave it to keras.
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
	  echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist || \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null \
	  && echo "Fashion-MNIST installed from Debian's dataset-fashion-mnist"; \
	else \
	  echo "Fashion-MNIST not installed system-wide; distill will use the keras cache/download"; \
	fi

browser: ## Debian's Chromium, for the test that renders report.html (when root + apt).
	@if command -v chromium >/dev/null; then \
	  echo "chromium: $$(command -v chromium)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq chromium || \
	   (apt-get update -qq && apt-get install -y -qq chromium)) >/dev/null \
	  && echo "chromium installed from Debian"; \
	else \
	  echo "chromium not installed: the browser test will be skipped"; \
	fi

demo: install data ## Few labels: a teacher on 2,000 labels teaches students over 55,000 images (3 seeds).
	$(BIN)/distill teacher --recipe demo --workdir $(DEMO_DIR)/teacher --overwrite
	$(BIN)/distill sweep --teacher $(DEMO_DIR)/teacher --out $(DEMO_DIR)/students --overwrite \
	  --model linear --model mlp --model vit --mode hard --mode targets --seed 0 --seed 1 --seed 2 \
	  --jobs $(DEMO_JOBS)
	$(BIN)/distill report $(DEMO_DIR)/teacher $(DEMO_DIR)/students --out runs/demo-report -q
	$(BIN)/distill compare $(DEMO_DIR)/teacher $(DEMO_DIR)/students

teacher: install data ## Train the default (fashion_mnist recipe) teacher into runs/teacher.
	$(BIN)/distill teacher

student: install data ## Train the default CNN student from runs/teacher.
	$(BIN)/distill student --model cnn

bench: install data ## distill vs PyTorch (eager, compile) throughput; writes runs/bench/results.jsonl.
	benchmarks/bench.sh

test: install data browser ## Lint (ruff, configured in pyproject.toml), then run the test suite.
	$(BIN)/ruff check distill tests benchmarks
	$(BIN)/python -m pytest tests $(PYTEST_WORKERS)

test-lowest: data browser ## The test suite against the lowest versions pyproject.toml allows (in .venv-lowest).
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/pip install --quiet --upgrade pip
	$(LOWEST)/bin/python tests/lowest_pins.py > $(LOWEST)/constraints.txt
	$(LOWEST)/bin/pip install --quiet -c $(LOWEST)/constraints.txt -e '.[test,onnx]'
	$(LOWEST)/bin/python -m pytest tests $(PYTEST_WORKERS)

test-newest: data browser ## The test suite against the newest versions pyproject.toml allows, on Python 3.12+ (in .venv-newest).
ifeq ($(PYTHON_NEWEST),)
	@echo "test-newest skipped: no python3.12 or python3.13 on PATH or in pyenv"
else
	$(PYTHON_NEWEST) -m venv $(NEWEST)
	$(NEWEST)/bin/pip install --quiet --upgrade pip
	$(NEWEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[test,onnx]'
	@# jax2onnx 0.17 (the onnx extra) holds orbax-checkpoint below 0.11.37 but never imports it.
	@# Resolving distill's own requirements again brings the newest Orbax they allow, as a user
	@# without the extra gets it; pip then reports jax2onnx's pin as a conflict, and goes on.
	$(NEWEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[test]'
	@$(NEWEST)/bin/python -c 'import sys, jax, flax; \
	  import orbax.checkpoint as ocp; \
	  print(f"Python {sys.version.split()[0]}, jax {jax.__version__}, flax {flax.__version__}, " \
	        f"orbax-checkpoint {ocp.__version__}")'
	$(NEWEST)/bin/python -m pytest tests $(PYTEST_WORKERS)
endif

clean: ## Remove run outputs (not the virtualenv).
	rm -rf runs
