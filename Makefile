# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
DEMO_STAMP := $(VENV)/.installed-demo
CALVIN_STAMP := $(VENV)/.installed-calvin
# ROS 2 (rclpy from PyPI wheels, rosbridge_server built from source) lives in its own venv (`make ros2`).
ROS2_VENV := .venv-ros2
ROS2_STAMP := $(ROS2_VENV)/.installed
ROS2_LOCK := constraints-ros2.txt
ROSBRIDGE_BUNDLE := ../shared/vendor/rosbridge_suite.bundle
VENDOR := ../shared/vendor
# Every install takes the exact versions the figures in docs/ were measured with (see `lock`).
LOCK := constraints.txt
PIP := $(BIN)/pip install --quiet -c $(LOCK)

.PHONY: demo test test-fast lint install clean lock ros2 lock-ros2

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) -e .
	touch $@

# The demo's policy reads instructions with a pretrained MiniLM, shipped offline on PyPI.
$(DEMO_STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) -e ".[minilm]"
	touch $@ $(STAMP)

# openpi-client pins numpy<2 but its websocket client needs nothing we lack (see pyproject's dev extra).
OPENPI_CLIENT := openpi-client==0.1.2

# The tests need Meta-World (tests/metaworld fail rather than skip where ROBOFLAMINGO_REQUIRE_METAWORLD=1).
$(DEV_STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) -e ".[dev,metaworld]"
	$(PIP) --no-deps "$(OPENPI_CLIENT)"
	touch $@ $(STAMP)

# The real calvin_env is not on PyPI and must be an editable git checkout (it reads its own commit
# at run time). Where the vendored bundle exists (CI), the tests install it from there, and its tests
# then fail rather than skip when it is missing (ROBOFLAMINGO_REQUIRE_CALVIN).
$(CALVIN_STAMP): | $(DEV_STAMP)
	rm -rf $(VENV)/src/calvin_env
	git clone --quiet $(VENDOR)/calvin_env.bundle $(VENV)/src/calvin_env
	$(PIP) -e $(VENV)/src/calvin_env
	touch $@

TEST_ENV := ROBOFLAMINGO_REQUIRE_METAWORLD=1
ifneq ($(wildcard $(VENDOR)/calvin_env.bundle),)
TEST_DEPS += $(CALVIN_STAMP)
TEST_ENV += ROBOFLAMINGO_REQUIRE_CALVIN=1
endif

# The ROS 2 side venv: its rosbridge source is the vendored bundle where it exists, else GitHub
# (scripts/setup_ros2_venv.sh). Where the bundle exists (CI), the ROS 2 tests fail rather than skip
# without it (ROBOFLAMINGO_REQUIRE_ROS2).
$(ROS2_STAMP): $(ROS2_LOCK) scripts/setup_ros2_venv.sh | $(STAMP)
	MAIN_VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/setup_ros2_venv.sh $(ROS2_VENV) $(wildcard $(ROSBRIDGE_BUNDLE))
	touch $@

ros2: $(ROS2_STAMP)

lock-ros2: | $(STAMP)
	ROS2_LOCK=1 MAIN_VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/setup_ros2_venv.sh $(ROS2_VENV) $(wildcard $(ROSBRIDGE_BUNDLE))
	touch $(ROS2_STAMP)

ifneq ($(wildcard $(ROSBRIDGE_BUNDLE)),)
TEST_DEPS += $(ROS2_STAMP)
TEST_ENV += ROBOFLAMINGO_REQUIRE_ROS2=1
endif

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/roboflamingo demo

lint: $(DEV_STAMP)
	$(BIN)/ruff check roboflamingo tests scripts

# The sdist and the wheel built from it, as a release would make them (the package data must reach
# both; tests/test_wheel.py installs a wheel into a fresh venv and runs the commands from it).
DIST := dist

test: $(DEV_STAMP) $(TEST_DEPS)
	$(BIN)/ruff check roboflamingo tests scripts
	rm -rf $(DIST)
	$(BIN)/python -m build --outdir $(DIST) .
	$(TEST_ENV) $(BIN)/python -m pytest -q

# The edit loop: everything but the tests marked slow, on every core (one torch thread per worker) (the whole suite is `make test`, as CI runs it).
test-fast: $(DEV_STAMP) $(TEST_DEPS)
	$(TEST_ENV) OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow" -n auto

# Re-resolve every extra from scratch (newest packages within pyproject's ranges) and write the lock.
# The demo's figures depend on these versions: re-run `make demo` from a fresh clone and update docs/demo.md (and README's table).
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/pip install --quiet -e ".[dev,minilm,metaworld]"
	$(LOCK_VENV)/bin/pip install --quiet --no-deps "$(OPENPI_CLIENT)"
	{ sed -n '/^#/p' $(LOCK); $(LOCK_VENV)/bin/pip freeze --exclude-editable | LC_ALL=C sort -f; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(ROS2_VENV) .pytest_cache .ruff_cache $(DIST) build
