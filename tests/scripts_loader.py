"""Loading a command of reatco/commands/ (what scripts/<name>.py runs) as a fresh module, for the tests
that call its main(argv) in process."""

import importlib.util
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "reatco" / "commands"


def load_script(name: str):
    """reatco/commands/<name>.py as a fresh module."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
