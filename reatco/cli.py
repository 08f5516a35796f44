"""What the scripts share: `--help` without the heavy imports, and the settings of a benchmark or
training command line as a dataclass (`settings_class`).

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
