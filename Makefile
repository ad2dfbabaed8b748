# The two set-up commands of the README. Each creates .venv and installs what it needs itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_STORE ?= demo-store

.PHONY: demo test lint typecheck browser

# PYTHONWARNINGS: setuptools warns on every editable install that a folder named like the package
# may shadow it (cli/ and analyses/ are mapped into embedstore on purpose); nothing to act on.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[dev]'
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

# mypy checks the installed package; it cannot follow the editable install's import hook, so cli/ and
# analyses/ (installed as embedstore.cli / embedstore.analyses) are linked under build/mypy/embedstore.
typecheck: $(STAMP)
	mkdir -p build/mypy/embedstore && ln -sfn ../../../cli ../../../analyses build/mypy/embedstore/
	$(BIN)/mypy

test: lint typecheck browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -n 2
