"""The committed lock: what `make demo`/`make test` install is pinned, and agrees with pyproject's ranges."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the package itself supports 3.10

ROOT = Path(__file__).resolve().parents[1]
# The extras the Makefile installs (demo: minilm; test: dev and metaworld).
LOCKED_EXTRAS = ("dev", "minilm", "metaworld")


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for n, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert m, f"constraints.txt:{n}: expected 'name==version', got {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"constraints.txt:{n}: {m.group(1)} pinned twice"
        pins[name] = m.group(2)
    return pins


def test_every_declared_dependency_is_pinned_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in LOCKED_EXTRAS:
        declared += project["optional-dependencies"][extra]
    pins = _lock()
    for spec in declared:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's '{req.specifier}'"
        )


def test_figure_relevant_packages_are_pinned():
    # What the demo's numbers moved with between two fresh installs (docs/demo.md).
    pins = _lock()
    for name in ("torch", "transformers", "tokenizers", "sentence-transformers", "open-clip-torch", "numpy"):
        assert name in pins, f"{name} is not pinned in constraints.txt"


def test_makefile_installs_only_through_the_lock():
    lines = (ROOT / "Makefile").read_text().splitlines()
    in_lock_target = False
    for n, line in enumerate(lines, 1):
        if re.match(r"^[A-Za-z_.$()-]+\s*:", line):
            in_lock_target = line.startswith("lock:")
        if in_lock_target or "pip install" not in line:
            continue
        # The lock target resolves afresh by design; everything else goes through $(PIP) = pip -c $(LOCK).
        assert "--upgrade pip" in line or line.startswith("PIP :="), f"Makefile:{n} installs without the lock: {line}"
    assert any(line.startswith("PIP :=") and "-c $(LOCK)" in line for line in lines)
    assert "LOCK := constraints.txt" in lines
