# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# constraints.txt pins every package to the version the suite last passed with (pyproject.toml
# keeps ranges); `make lock` refreshes it from the newest releases inside those ranges.
# PIP_CONSTRAINT also pins pip's isolated build environment (setuptools, wheel), which -c
# does not reach.
LOCK := constraints.txt

.PHONY: demo test lint bench clean lock

$(STAMP): pyproject.toml $(LOCK)
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade -c $(LOCK) pip
	PIP_CONSTRAINT=$(LOCK) $(BIN)/pip install -q -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

lock:
	rm -rf .lock-venv
	$(PY) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q -e '.[dev]'
	{ echo "# Exact versions \`make test\` last passed with; \`make lock\` rewrites this file."; \
	  .lock-venv/bin/pip freeze --all --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .lock-venv

demo: $(STAMP)
	$(BIN)/wafer targets
	$(BIN)/wafer inspect gpt2-small
	$(BIN)/wafer check llama3-70b --target wse3-x4
	$(BIN)/wafer compile llama3-8b --target wse3 --context 8192 -o out/llama3-8b --force
	$(BIN)/wafer compile gpt2-small --target wse3 --seq-len 128 -o out/gpt2-small --force --verify
	$(BIN)/wafer view out/gpt2-small

# The suite runs on every core (pytest-xdist; `make test WORKERS=0` runs it in one process).
# --dist loadfile keeps each test file on one worker, so a file's module-level caches and
# fixtures (compiles shared by its tests) are built once.
WORKERS ?= auto

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/frontend.py
	$(BIN)/python benchmarks/placement.py
	$(BIN)/python benchmarks/calibration.py
	$(BIN)/python benchmarks/fault_injection.py
	$(BIN)/python benchmarks/report.py
	$(BIN)/python benchmarks/sweep.py

clean:
	rm -rf $(VENV) .lock-venv build *.egg-info
