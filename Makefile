# cliptool: `make demo` installs and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pip here also offers a CPU-only "+cpu" torch build that torchvision cannot load with.
TORCH := torch==2.13.0,!=2.13.0+cpu
SAMPLES := data/samples
DEMO_INDEX := data/demo-index

.PHONY: install demo test test-long bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) data/make_samples.py $(SAMPLES)
	$(PY) data/demo.py $(SAMPLES) $(DEMO_INDEX)

test: install
	$(PY) -m pytest -q -m "not slow"

test-long: install
	CLIPTOOL_KILLS=200 $(PY) -m pytest -q -m slow

bench: install
	$(PY) -m cliptool.bench $(BENCH_ARGS)

clean:
	rm -rf $(SAMPLES) $(DEMO_INDEX) $(DEMO_INDEX)-offline data/offline-model bench-out .pytest_cache
