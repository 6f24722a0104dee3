"""The package's one version string: ``pyproject.toml`` reads it (``[tool.setuptools.dynamic]``), so
the wheel's metadata, ``roboflamingo.__version__`` and what a checkpoint records cannot disagree."""

__version__ = "0.1.0"
