"""The command lines: each module is one command (`reatco-edit` = edit.py, ...), parsing its flags
before any heavy import (so that --help is instant) and calling the library. `scripts/<name>.py`
runs the same `command()` from a checkout."""
