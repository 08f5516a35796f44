"""Every script answers --help at once: before torch, diffusers or transformers are imported."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))
# eval_loveu's parser shows the metric models' default ids, which live in modules that import torch
NEEDS_TORCH_FOR_HELP = {"eval_loveu.py"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_printed_without_the_heavy_imports(script):
    run = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "scripts" / script), "--help"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("usage: " + script)
    imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    heavy = imported & {"torch", "diffusers", "transformers"}
    if script not in NEEDS_TORCH_FOR_HELP:
        assert not heavy, f"{script} --help imported {sorted(heavy)}"


def test_edit_help_offers_only_real_things():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "edit.py"), "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    configs = " ".join(p.read_text() for p in (ROOT / "configs").glob("*.yaml"))
    # every `--only <edit>` example names an edit that some config has
    examples = [part.split()[0] for part in run.stdout.split("--only ")[1:] if not part.startswith("NAME")]
    assert examples and all(f"name: {e}" in configs for e in examples), examples
    assert "--overwrite" in run.stdout
