# Two commands do all the set-up (README): `make run` and `make test`.
# Each bootstraps .venv from nothing with the Python 3.11+ found as $(PYTHON).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH := $(shell find bench -maxdepth 1 -type f -perm -u+x | sort)

.PHONY: run test lint check bench clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "voicecalld needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,bench]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/voicecalld run

test: $(STAMP)
	$(BIN)/pytest -q -n 2 $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . $(BENCH)
	$(BIN)/ruff format --check . $(BENCH)
	$(BIN)/mypy
	for script in $(BENCH); do $(BIN)/mypy "$$script" || exit 1; done

check: test lint

bench: $(STAMP)
	$(BIN)/python bench/run-all $(ARGS)

clean:
	rm -rf $(VENV)
