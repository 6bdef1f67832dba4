# Two commands do all the set-up on a fresh machine:
#   make demo   # venv + install + the whole DRIFT method on the embedded default (toy) -> runs/toy-drift
#   make test   # venv + install + lint + the fast test suite
# torch is installed first and pinned (TORCH) so that pip never pulls a multi-GB CUDA build on a CPU box;
# on a GPU machine use e.g. `make demo TORCH="torch --index-url <your CUDA wheel index>"` or TORCH=torch.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
RUN ?= runs/toy-drift
# OpenMP threads that spin while waiting steal the core their peer needs when the machine is shared (CI, a
# laptop doing other work). Seen on this project's loaded build box (ad hoc timings, no repo command measures
# it; the step logs of two toy runs minutes apart showed a rollout of 203 s without it and 23 s with it).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install demo test test-slow lint format bench clean toy-model

# pip's own notices (e.g. a machine's pip config naming an index folder that is absent prints
# "WARNING: Location ... is ignored") go to $(PIP_LOG), not the terminal; when an install fails, the log's
# last lines (pip's ERROR lines, without those notices) are printed and make stops.
PIP_LOG := $(VENV)/pip-install.log

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@echo "pip install $(TORCH) and drift-lite[dev] into $(VENV) (pip's output: $(PIP_LOG))"
	@{ $(BIN)/pip install -q --upgrade pip && $(BIN)/pip install -q $(TORCH) \
	  && $(BIN)/pip install -q -e ".[dev]"; } >$(PIP_LOG) 2>&1 || { grep -v "^WARNING: Location" $(PIP_LOG) | tail -n 30; exit 1; }
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/drift-lite run recipes/toy/drift.yaml --out $(RUN)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# pytest exits 5 when it collected no test: that is a failure here, not a pass
test: lint
	$(BIN)/pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test-slow: install
	$(BIN)/pytest -q -m slow; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

# Rebuild the default toy reference shipped in drift_lite/data/toy/ (after an edit to its corpus, solver,
# tokenizer or training loop; tests/test_toy_model.py says when). Minutes on a CPU.
toy-model: install
	$(BIN)/python -m drift_lite.toy_model --ship

clean:
	rm -rf $(VENV) runs
