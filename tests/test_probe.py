"""The hostile-user probe: bad inputs, damaged files, NaN, interruptions and concurrent runs over
scripts/edit.py, tune.py and eval_loveu.py. Every case asserts its exit code (2: bad input, before
any model loads; 3: non-finite; 130: interrupted), that nothing was written outside the output
and cache folders, and that the finished result already there is byte-identical (or, for a run
that succeeds, replaced by a complete one) with no partial folder left behind."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from file_trees import tree_hashes
from tiny_models import save_tiny_sd

ROOT = Path(__file__).resolve().parent.parent
SIZE, N_FRAMES = 32, 3
RESULT_FILES = {"edited.mp4", "edited.gif", "attention.mp4", "regions.png", "regions.json", "config.yaml", "report.json", "frames"}


def _script(name):
    spec = importlib.util.spec_from_file_location(f"probe_{name}", ROOT / "reatco" / "commands" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


edit_script, tune_script, eval_script = _script("edit"), _script("tune"), _script("eval_loveu")



def _write_frames(folder: Path, seed: int, sizes=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(N_FRAMES):
        h, w = (sizes[i] if sizes else (SIZE, SIZE))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png", compress_level=0)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    save_tiny_sd(root / "model")
    _write_frames(root / "frames", 0)
    box = root / "sandbox"
    box.mkdir()
    return root


def _config(root: Path, name="c", **changes) -> Path:
    cfg = {
        "model": {"pretrained": str(root / "model"), "attention_cell_px": 8},
        "video": {"path": str(root / "frames"), "prompt": "a cat and a dog", "height": SIZE, "width": SIZE, "n_frames": N_FRAMES},
        "tune": {"enabled": True, "steps": 2, "learning_rate": 1e-4},
        "sampling": {"steps": 3, "guidance_scale": 3.0, "seed": 5},
        "rad": {"max_update_steps": 2, "refinement_thresholds": {0: 0.5}, "max_refinement_iters": 1},
        "output_dir": str(root / "out"),
        "cache_dir": str(root / "cache"),
        "save_gif": True,
        "edits": [{"name": "swap", "prompt": "a rabbit and a horse",
                   "objects": [{"word": "rabbit", "box": [0, 0, 16, 16]}, {"word": "horse", "box": [16, 16, 32, 32]}]}],
    }
    for key, value in changes.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value
    path = root / "configs" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def finished(sandbox):
    """A finished result in out/swap, made once; every case must leave it as it is (or whole)."""
    assert edit_script.main(["--config", str(_config(sandbox, "base")), "--quiet"]) == 0
    result = sandbox / "out" / "swap"
    assert {p.name for p in result.iterdir()} == RESULT_FILES
    return result


def _check_untouched(sandbox, before, finished):
    """Nothing changed anywhere but the cache; no partial folder left."""
    after = tree_hashes(sandbox, skip=(sandbox / "cache",))
    assert after == before, {k for k in set(after) ^ set(before)} or "changed files"
    assert not [p for p in (sandbox / "out").iterdir() if ".partial" in p.name or ".old" in p.name]


def _run_case(sandbox, finished, capsys, argv, script=None):
    (sandbox / "configs").mkdir(exist_ok=True)
    before = tree_hashes(sandbox, skip=(sandbox / "cache", sandbox / "configs"))
    code = (script or edit_script).main(argv)
    err = capsys.readouterr().err
    after = tree_hashes(sandbox, skip=(sandbox / "cache", sandbox / "configs"))
    assert after == before, sorted(set(after) ^ set(before)) or "a file changed"
    assert not [p for p in (sandbox / "out").iterdir() if ".partial" in p.name or ".old" in p.name]
    assert "Traceback" not in err
    return code, err


LONG = "a rabbit and a horse " + "in a green field with tall grass and flowers " * 8


@pytest.mark.parametrize("changes, extra, field", [
    ({"sampling.guidance_scale": float("inf")}, [], "sampling.guidance_scale"),
    ({"rad.step_size": float("inf")}, [], "rad.step_size"),
    ({"tune.learning_rate": float("inf")}, [], "tune.learning_rate"),
    ({"sampling.guidance_scale": float("nan")}, [], "sampling.guidance_scale"),
    ({"edits.0.prompt": LONG, "rad.normalize_eot": True}, [], "edits[0].prompt"),
    ({"model.attention_cell_px": 12}, [], "model.attention_cell_px"),
    ({}, ["--set", "sampling.seed=18446744073709551616"], "sampling.seed"),
    ({}, ["--set", "sampling.seed=[1,"], "sampling.seed"),
    ({"edits": []}, [], "edits"),
    ({"video.prompt": "${oc.env:HOME}"}, [], "video.prompt"),
    ({"rad.max_update_steps": -1}, [], "rad.max_update_steps"),
    ({"rad.temperature": 0}, [], "rad.temperature"),
    ({"model.attention_cell_px": 0}, [], "model.attention_cell_px"),
])
def test_bad_config_exits_2_naming_the_field_and_changes_nothing(sandbox, finished, capsys, monkeypatch, changes, extra, field):
    import reatco.runner

    monkeypatch.setattr(reatco.runner.EditRunner, "pipeline", lambda self: pytest.fail("a model was loaded"))
    config = _config(sandbox, "bad", **changes)
    code, err = _run_case(sandbox, finished, capsys, ["--config", str(config), "--quiet", "--overwrite", *extra])
    assert code == 2 and err.startswith(f"error: {field}"), err


def test_output_dir_that_is_a_file_exits_2_before_tuning(sandbox, finished, capsys, monkeypatch):
    import reatco.runner

    monkeypatch.setattr(reatco.runner.EditRunner, "pipeline", lambda self: pytest.fail("a model was loaded"))
    (sandbox / "out" / "notes.txt").write_text("mine")
    config = _config(sandbox, "file", output_dir=str(sandbox / "out" / "notes.txt"))
    code, err = _run_case(sandbox, finished, capsys, ["--config", str(config), "--quiet", "--overwrite"])
    assert code == 2 and err.startswith("error: output_dir") and (sandbox / "out" / "notes.txt").read_text() == "mine"


def test_mixed_size_frames_exit_2(sandbox, finished, capsys):
    _write_frames(sandbox / "mixed", 1, sizes=[(32, 32), (32, 32), (40, 32)])
    config = _config(sandbox, "mixed", **{"video.path": str(sandbox / "mixed")})
    code, err = _run_case(sandbox, finished, capsys, ["--config", str(config), "--quiet", "--overwrite"])
    assert code == 2 and "video.path" in err and "differ in size" in err


def test_a_truncated_tuned_unet_is_refused_naming_it(sandbox, finished, capsys):
    report = json.loads((finished / "report.json").read_text())
    broken = sandbox / "broken_unet"
    import shutil

    shutil.copytree(report["unet"]["path"], broken)
    weights = broken / "diffusion_pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    config = _config(sandbox, "trunc", **{"model.tuned_unet": str(broken)})
    code, err = _run_case(sandbox, finished, capsys, ["--config", str(config), "--quiet", "--overwrite"])
    assert code == 2 and err.startswith("error: model.tuned_unet") and "damaged or truncated" in err


def test_a_tune_output_dir_of_another_setup_exits_2_before_tuning(sandbox, finished, capsys):
    mine = sandbox / "out" / "my_unet"
    assert tune_script.main(["--config", str(_config(sandbox, "t1")), "--output_dir", str(mine), "--quiet"]) == 0
    capsys.readouterr()
    config = _config(sandbox, "t2", **{"tune.steps": 3, "tune.output_dir": str(mine)})
    code, err = _run_case(sandbox, finished, capsys, ["--config", str(config), "--quiet", "--overwrite"])
    assert code == 2 and err.startswith("error: tune.output_dir") and "another setup" in err


def test_tune_script_rejects_inf(sandbox, finished, capsys):
    config = _config(sandbox, "tinf", **{"tune.learning_rate": float("inf")})
    code, err = _run_case(sandbox, finished, capsys, ["--config", str(config), "--quiet"], script=tune_script)
    assert code == 2 and err.startswith("error: tune.learning_rate")


def test_a_diverging_edit_exits_3_and_writes_nothing(sandbox, finished, capsys):
    config = _config(sandbox, "nan", **{"rad.step_size": 1e38})  # finite, but the update overflows
    code, err = _run_case(sandbox, finished, capsys, ["--config", str(config), "--quiet", "--overwrite"])
    assert code == 3 and "non-finite" in err


def test_an_interrupted_write_exits_130_and_keeps_the_finished_result(sandbox, finished, capsys, monkeypatch):
    import reatco.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reatco.runner, "write_frames", interrupted)
    config = _config(sandbox, "int", **{"sampling.seed": 6})
    code, err = _run_case(sandbox, finished, capsys, ["--config", str(config), "--quiet", "--overwrite"])
    assert code == 130 and "interrupted" in err


@pytest.mark.parametrize("case", ["out_is_file", "missing_clip", "traversal"])
def test_eval_loveu_bad_input_exits_2(sandbox, finished, capsys, case):
    data = sandbox / "loveu"
    (data / "DAVIS_480p" / "480p_frames").mkdir(parents=True, exist_ok=True)
    _write_frames(data / "DAVIS_480p" / "480p_frames" / "fish", 2)
    name = "../../../../escaped" if case == "traversal" else "fish"
    (data / "LOVEU-TGVE-2023_Dataset.csv").write_text(
        "Video name,Our GT caption,Style Change Caption,Object Change Caption,Background Change Caption,Multiple Changes Caption\n"
        f"DAVIS Videos:,,,,,\n{name},Fish swim.,Fish in Van Gogh style.,Sharks swim.,Fish in the sea.,Sharks in the sea.\n")
    out = sandbox / "out" / "eval"
    if case == "out_is_file":
        out = sandbox / "out" / "eval.txt"
        out.write_text("mine")
    clip = str(sandbox / "no-such-clip") if case == "missing_clip" else "openai/clip-vit-base-patch32"
    argv = ["--data_root", str(data), "--pred_root", str(sandbox / "out" / "pred"), "--out", str(out), "--no_run",
            "--metrics", "clip_text", "--clip_model", clip]
    if case == "missing_clip":
        _write_frames(sandbox / "out" / "pred" / "DAVIS_480p" / "fish" / "style", 3)
        argv += ["--categories", "style"]
    code, err = _run_case(sandbox, finished, capsys, argv, script=eval_script)
    assert code == 2, err
    assert {"out_is_file": "--out", "missing_clip": "--clip_model", "traversal": "cannot be used as a folder name"}[case] in err


def test_a_finished_result_is_not_replaced_without_overwrite(sandbox, finished, capsys):
    code, err = _run_case(sandbox, finished, capsys, ["--config", str(_config(sandbox, "again")), "--quiet"])
    assert code == 2 and "--overwrite" in err


def test_a_changed_setting_retunes_and_replaces_the_result_whole(sandbox, finished, capsys):
    first = json.loads((finished / "report.json").read_text())
    config = _config(sandbox, "steps", **{"tune.steps": 3})
    assert edit_script.main(["--config", str(config), "--quiet", "--overwrite"]) == 0
    report = json.loads((finished / "report.json").read_text())
    assert report["unet"]["source"] == "tuned" and report["unet"]["key"] != first["unet"]["key"]
    assert {p.name for p in finished.iterdir()} == RESULT_FILES
    # back to the first setup: its UNet is found in the cache, not tuned again
    assert edit_script.main(["--config", str(_config(sandbox, "base")), "--quiet", "--overwrite"]) == 0
    again = json.loads((finished / "report.json").read_text())
    assert again["unet"] == {**first["unet"], "source": "cache"} and "tune" not in again["timings_s"]


def _env(sandbox):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "REATCO_CACHE_DIR": str(sandbox / "cache")}


def test_two_concurrent_runs_on_one_folder_both_finish_whole(sandbox, finished):
    """Fresh output folder and cache: the two runs share the tuning (one waits for the other)."""
    config = _config(sandbox, "conc", output_dir=str(sandbox / "conc"), cache_dir=str(sandbox / "conc-cache"))
    cmd = [sys.executable, str(ROOT / "scripts" / "edit.py"), "--config", str(config), "--quiet", "--overwrite"]
    procs = [subprocess.Popen(cmd, env=_env(sandbox), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    assert {p.name for p in (sandbox / "conc").iterdir() if not p.name.startswith(".")} == {"swap"}
    assert not [p for p in (sandbox / "conc").iterdir() if ".partial" in p.name or ".old" in p.name]
    assert {p.name for p in (sandbox / "conc" / "swap").iterdir()} == RESULT_FILES
    assert len(list((sandbox / "conc-cache" / "tuned").glob("*/config.json"))) == 1
    assert not list((sandbox / "conc-cache" / "tuned").glob(".*partial*"))
    # the run that finished second reused the first's tuning (it waited on the lock) or tuned it
    assert json.loads((sandbox / "conc" / "swap" / "report.json").read_text())["unet"]["source"] in ("tuned", "cache")


def test_two_concurrent_runs_with_different_seeds_never_replace_each_other_silently(sandbox, finished):
    """No --overwrite: the run that finishes first keeps the folder; the other stops with exit 2
    naming --overwrite — at start-up if the first had finished by then, else at the moment of
    replacing, with its own result kept beside (`<name>.kept-XXXX`). Nothing is lost."""
    out = sandbox / "race"
    configs = [_config(sandbox, f"race{seed}", **{"sampling.seed": seed}, output_dir=str(out), cache_dir=str(sandbox / "race-cache"))
               for seed in (11, 12)]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "scripts" / "edit.py"), "--config", str(c), "--quiet"],
                              env=_env(sandbox), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in configs]
    results = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], [r[1][-2000:] for r in results]
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert "--overwrite" in results[loser][1] and "Traceback" not in results[loser][1]
    assert json.loads((out / "swap" / "report.json").read_text())["seed"] == (11, 12)[winner]
    kept = [p for p in out.iterdir() if ".kept-" in p.name]
    assert len(kept) <= 1 and not [p for p in out.iterdir() if ".partial" in p.name]
    if kept:  # stopped at the replacement: its finished result is there, whole
        assert json.loads((kept[0] / "report.json").read_text())["seed"] == (11, 12)[loser]
        assert {p.name for p in kept[0].iterdir()} == RESULT_FILES and str(kept[0]) in results[loser][1]


def test_sigint_exits_130_without_a_traceback(sandbox, finished):
    before = tree_hashes(sandbox / "out")
    # enough tuning that the signal lands mid-run even when this process waits for a loaded CPU
    # (with 50 steps the edit once finished first: both test workers and the child on one core)
    config = _config(sandbox, "sigint", **{"sampling.seed": 8, "tune.steps": 1000})
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "edit.py"), "--config", str(config), "--quiet", "--overwrite"],
                            env=_env(sandbox), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the token table is printed after validation, before the model loads
        if line.startswith("[swap]"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err
    assert tree_hashes(sandbox / "out") == before
