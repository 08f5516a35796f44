"""Errors that reach users. A ConfigError names the offending field and how to fix it."""


class ReAtCoError(Exception):
    """Base class of reatco's own errors."""


class ConfigError(ReAtCoError, ValueError):
    """Bad user input (config value, file, region, word). The CLIs exit with code 2 on it."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")
