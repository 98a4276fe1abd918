"""The one place crfcore's version is written: ``pyproject.toml`` reads it (``[tool.setuptools.dynamic]``), so the
installed metadata and :data:`crfcore.__version__` are the same string."""

__version__ = "0.2.0"
