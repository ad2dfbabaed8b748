# The two set-up commands of the README. Each creates .venv and installs what it needs itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_STORE ?= demo-store

.PHONY: demo test lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

DEMO_DATA ?= demo-data

# The main job on the embedded default: synthetic IU-Xray sample, the demo model (pretrained once,
# cached), zs/lp/ft runs and the study tables. Each step reuses what an earlier run left.
demo: $(STAMP)
	$(BIN)/embedstore store init --store $(DEMO_STORE)
	test -f $(DEMO_DATA)/iuxray_frontal_14labels.csv || $(BIN)/embedstore data sample --out $(DEMO_DATA)
	$(BIN)/embedstore sql "select 1 from datasets where name = 'iuxray'" --format csv --store $(DEMO_STORE) | grep -q 1 \
		|| $(BIN)/embedstore ingest $(DEMO_DATA) --name iuxray --store $(DEMO_STORE)
	$(BIN)/embedstore extract --mode zs --model demo --data iuxray --protocol study --store $(DEMO_STORE)
	$(BIN)/embedstore extract --mode zs --model demo --data iuxray --store $(DEMO_STORE)
	$(BIN)/embedstore extract --mode lp --model demo --data iuxray --protocol study --store $(DEMO_STORE)
	$(BIN)/embedstore extract --mode lp --model demo --data iuxray --store $(DEMO_STORE)
	$(BIN)/embedstore extract --mode ft --model demo --data iuxray --protocol study --epochs 3 --store $(DEMO_STORE)
	$(BIN)/embedstore store verify --store $(DEMO_STORE)
	$(BIN)/embedstore analyze --data iuxray --protocol both --store $(DEMO_STORE)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q
