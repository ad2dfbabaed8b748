# The two set-up commands of the README. Each creates .venv and installs what it needs itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_STORE ?= demo-store

.PHONY: demo test lint browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on the embedded default: synthetic IU-Xray sample, the demo model (pretrained once,
# cached), zs/lp/ft runs, analyses, charts and the report. A second run reuses what is cached.
demo: $(STAMP)
	$(BIN)/embedstore demo --store $(DEMO_STORE)

# The browser test opens the report in Debian's headless Chromium (through chromedriver).
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -n 2
