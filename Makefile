# Two commands do all the set-up (see README.md):
#   make demo   the main job: the backend comparison on the built-in sinusoid default
#   make test   the docs build and the test suite (what CI runs: .ci/run is `make test`)
# Both create a local environment (.venv, `python -m venv`) with the pinned dependencies on first use and
# reuse it afterwards; it is reinstalled only when setup.cfg, pyproject.toml or constraints.txt change.
# Variables: PYTHON (the interpreter that creates .venv, >= 3.10), EXTRAS (e.g. EXTRAS=torch,tf-cpu,plots,test,docs
# for the smaller CPU-only TensorFlow wheel), VENV (where the environment lives).

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= all,test,docs
BIN := $(VENV)/bin
STAMP := $(VENV)/.dualmeta-installed
comma := ,

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test env clean-env

demo: $(STAMP)
	$(BIN)/python -m dualmeta compare

test: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet -d "$$(mktemp -d)"
	$(BIN)/python -m pytest -q -n 2

env: $(STAMP)

# The stamp records the extras it was built with, so `make EXTRAS=...` reinstalls when they change.
$(STAMP): setup.cfg pyproject.toml constraints.txt $(VENV)/.extras-$(subst $(comma),_,$(EXTRAS))
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

$(VENV)/.extras-%:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), f"dualmeta needs Python >= 3.10; $(PYTHON) is {sys.version.split()[0]}: make PYTHON=python3.11"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@rm -f $(VENV)/.extras-* && touch $@

clean-env:
	rm -rf $(VENV)
