# cliptool: `make demo` installs and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pip here also offers a CPU-only "+cpu" torch build that torchvision cannot load with.
TORCH := torch==2.13.0,!=2.13.0+cpu
SAMPLES := data/samples
DEMO_INDEX := data/demo-index

.PHONY: install install-light install-browser install-tools demo test test-long bench soak clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[torch,test,cluster,whisper]"
	touch $@

install: $(VENV)/.installed

# What a user needs to index and search with models already exported (about 0.95 GB, no torch):
# `pip install .`; `pip install '.[torch]'` adds open_clip and torch for exporting a new model.
LIGHT_VENV ?= .venv-light
install-light:
	$(PYTHON) -m venv $(LIGHT_VENV)
	$(LIGHT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LIGHT_VENV)/bin/python -m pip install --quiet .
	@du -sh $(LIGHT_VENV)

# Headless Chromium and its driver for tests/test_browser.py (Debian/Ubuntu; the test skips without them).
install-browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then echo "chromium and chromedriver present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	  || echo "could not install chromium: the browser test will skip"; \
	else echo "not root or no apt-get: install chromium and chromium-driver yourself, or the browser test skips"; fi

# Festival with two English voices (the test media's speech) and tesseract with English (on-screen
# text) for tests/test_speech.py and tests/test_screen_text.py (Debian/Ubuntu; the tests skip without).
TOOLS_APT := festival festvox-us-slt-hts festvox-kallpc16k tesseract-ocr tesseract-ocr-eng
install-tools:
	@if command -v text2wave >/dev/null && [ -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ] && command -v tesseract >/dev/null; then \
	  echo "festival, its voices and tesseract present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TOOLS_APT) \
	  || echo "could not install $(TOOLS_APT): the speech and screen-text tests will skip"; \
	else echo "not root or no apt-get: install $(TOOLS_APT) yourself, or the speech and screen-text tests skip"; fi

demo: install
	$(PY) data/make_samples.py $(SAMPLES)
	$(PY) data/demo.py $(SAMPLES) $(DEMO_INDEX)

# Two pytest workers, each taking whole test files (module fixtures are built once): 9.8 min on
# 2 cores against 16-17 min in one process. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -m "not slow" $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test-long: install
	CLIPTOOL_KILLS=200 $(PY) -m pytest -q -m slow

bench: install
	$(PY) -m cliptool.bench $(BENCH_ARGS)

# A real `cliptool serve` under load while index runs add and remove videos (not part of `make test`):
# RSS, open files and latency each minute; fails on a failed request or unbounded growth.
SOAK_MINUTES ?= 10
soak: install
	$(PY) -m cliptool.bench.soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

clean:
	rm -rf $(SAMPLES) $(DEMO_INDEX) $(DEMO_INDEX)-offline data/offline-model bench-out .pytest_cache
