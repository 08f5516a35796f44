"""The package version, in one place: pyproject.toml reads it (dynamic version), the reports and
resolved configs write it."""

__version__ = "0.1.0"
