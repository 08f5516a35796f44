"""Errors that reach users. A ConfigError names the offending field and how to fix it."""


class ReAtCoError(Exception):
    """Base class of reatco's own errors."""


class ConfigError(ReAtCoError, ValueError):
    """Bad user input (config value, file, region, word). The CLIs exit with code 2 on it."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class NonFiniteError(ReAtCoError, ArithmeticError):
    """A NaN or inf appeared (tuning, RAD update, decoding): nothing is written or cached.
    The CLIs exit with code 3 on it."""

    def __init__(self, where: str, hint: str = ""):
        self.where = where
        self.hint = hint
        super().__init__(f"non-finite values (NaN or inf) {where}; nothing was written" + (f". {hint}" if hint else ""))


def check_finite(tensor, where: str, hint: str = "") -> None:
    """Raise NonFiniteError unless every value of `tensor` (torch or numpy) is finite."""
    import numpy as np

    if hasattr(tensor, "isfinite"):  # torch
        import torch

        ok = bool(torch.isfinite(tensor).all()) if tensor.is_floating_point() else True
    else:
        array = np.asarray(tensor)
        ok = bool(np.isfinite(array).all()) if np.issubdtype(array.dtype, np.floating) else True
    if not ok:
        raise NonFiniteError(where, hint)
