"""What the scripts share: `--help` without the heavy imports, the settings of a benchmark or
training command line as a dataclass (`settings_class`), the flags of the scripts that run a
config (`config_parser`, `add_run_arguments`, `start_run`) and their exit codes
(`run_main`: 2 bad input, 3 non-finite values, 130 interrupted).

The scripts import torch, diffusers and transformers at the top (seconds to tens of seconds on a
loaded machine) only to print their usage.

Each script calls `help_without_imports(__file__)` before those imports. When `-h`/`--help` is
asked for, it runs the script's top-level statements one by one, leaving out the imports of
anything but the standard library and skipping each statement that needs them (a NameError), then
calls the script's `parse_args()` (or `build_parser().parse_args()`, or `main()`), which prints the
help and exits. Should the parser itself need a skipped name, the script goes on with its normal
imports and prints the same help, only slower.
"""

from __future__ import annotations

import __future__
import ast
import sys

_ENTRY_POINTS = ("parse_args", "build_parser", "main")
_SKIPPED = (NameError, ImportError, AttributeError)


def _heavy_import(node: ast.stmt) -> bool:
    """An import of anything but the standard library (torch, numpy, reatco, ...)."""
    if isinstance(node, ast.ImportFrom):
        return bool(node.level) or (node.module or "").split(".")[0] not in sys.stdlib_module_names | {"__future__"}
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] not in sys.stdlib_module_names for a in node.names)
    return False


def _main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)


def help_without_imports(script: str) -> None:
    """Print the script's --help and exit when it is asked for; otherwise return at once."""
    if not {"-h", "--help"} & set(sys.argv[1:]):
        return
    with open(script) as f:
        tree = ast.parse(f.read(), script)
    namespace = {"__name__": "__help__", "__file__": script, "__doc__": ast.get_docstring(tree, clean=False)}
    for node in tree.body:
        if _heavy_import(node) or _main_guard(node):
            continue
        try:
            code = compile(ast.Module([node], type_ignores=[]), script, "exec",
                           flags=__future__.annotations.compiler_flag, dont_inherit=True)  # annotations stay text
            exec(code, namespace)
        except _SKIPPED:
            continue  # needs a skipped import; the parser will not
    entry = next((name for name in _ENTRY_POINTS if name in namespace), None)
    if entry is None:
        return
    try:
        if entry == "build_parser":
            namespace[entry]().parse_args()
        else:
            namespace[entry]()
    except _SKIPPED:
        return  # the parser needs more than the standard library: the normal path prints it


def settings_class(name: str, rows, doc: str, module: str, check=None) -> type:
    """A dataclass of a command line's settings from rows (field, type, default), one field per
    flag of the same name; list defaults are copied per instance. `check(settings)` (optional)
    runs after construction (`__post_init__`)."""
    import dataclasses

    fields = [(field, kind, dataclasses.field(default_factory=lambda d=default: list(d)) if isinstance(default, list)
               else dataclasses.field(default=default)) for field, kind, default in rows]
    namespace = {"__doc__": doc, "__module__": module}
    if check is not None:
        namespace["__post_init__"] = check
    return dataclasses.make_dataclass(name, fields, namespace=namespace)


def config_parser(description: str, override_example: str):
    """A script's parser that starts with --config and --set, as every script that runs a config
    takes them (`override_example`: a KEY=VALUE for --set's help)."""
    import argparse

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (may inherit from another with base_config:)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help=f"override config values, e.g. {override_example} (repeatable: --set a=1 --set b=2, or --set a=1 b=2)")
    return parser


def thread_count(text: str) -> int:
    """--threads: a whole number ≥ 0 (argparse turns the ValueError into exit 2 naming the flag)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 0 (the idle cores) or a count ≥ 1") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 (the idle cores) or a count ≥ 1")
    return value


def add_run_arguments(parser, progress: str = "no progress bars") -> None:
    """--threads and --quiet (`progress` says what --quiet leaves out)."""
    parser.add_argument("--threads", type=thread_count, default=0, help="torch CPU threads (0: the idle cores, at least 1)")
    parser.add_argument("--quiet", action="store_true", help=progress)


def start_run(threads: int) -> None:
    """Torch's CPU threads (`reatco.threads.set_threads`) and reatco's INFO log lines on stderr."""
    import logging

    from .threads import set_threads

    set_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def run_main(body, argv, interrupted: str) -> int:
    """A script's main: `body(argv)`'s exit code, where bad input (ConfigError) prints "error: …"
    and exits 2, non-finite values (NonFiniteError) exit 3, and Ctrl-C prints `interrupted` (what
    is kept, what is not) and exits 130."""
    from .errors import ConfigError, NonFiniteError

    try:
        return body(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
