"""configs/shapes-auto.yaml end to end (no coordinates typed): the regions are found in the source
clip, used by the edit, written to regions.json, and regions.json reruns the edit as a boxes_file."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from reatco.config_files import load_config
from reatco.errors import ConfigError
from reatco.regions.finding import box_iou
from reatco.runner import EditRunner

ROOT = Path(__file__).resolve().parents[1]
FAST = ["tune.steps=3", "sampling.steps=4", "rad.max_update_steps=2", "rad.refinement_thresholds={}"]


def _edit_script():
    spec = importlib.util.spec_from_file_location("edit", ROOT / "reatco" / "commands" / "edit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shapes_auto_finds_edits_and_writes_reusable_regions(tmp_path, capsys):
    out = tmp_path / "out"
    edit = _edit_script()
    assert edit.main(["--config", str(ROOT / "configs" / "shapes-auto.yaml"), "--quiet", "--dry-run",
                      "--set", f"output_dir={out}", *FAST]) == 0
    assert "found when the edit runs" in capsys.readouterr().out
    assert edit.main(["--config", str(ROOT / "configs" / "shapes-auto.yaml"), "--quiet", "--set", f"output_dir={out}", *FAST]) == 0
    folder = out / "triangle-and-circle"
    doc = json.loads((folder / "regions.json").read_text())
    assert [o["word"] for o in doc["objects"]] == ["green circle", "yellow triangle"]
    assert doc["objects"][0]["source"].startswith("source: attention of source word 'red circle'")
    truth = json.loads((ROOT / "data" / "shapes-demo" / "truth.json").read_text())["boxes"]
    for obj, name in zip(doc["objects"], ["red circle", "blue square"]):
        ious = [box_iou(np.array(f["box"]), np.array(truth[name][f["frame"]], float)) for f in obj["frames"]]
        assert np.mean(ious) > 0.5, (name, ious)
    report = json.loads((folder / "report.json").read_text())
    assert "find_regions" in report["timings_s"]

    # the written regions, reused as boxes files, give the same regions
    cfg = load_config(ROOT / "configs" / "shapes.yaml", [f"output_dir={tmp_path / 'again'}", *FAST])
    for j, obj in enumerate(cfg.edits[0].objects):
        obj.box = obj.boxes = None
        obj.boxes_file, obj.track = str(folder / "regions.json"), obj.word
    prepared = EditRunner(cfg, progress=False).prepare()[0]
    for region, obj in zip(prepared.regions, doc["objects"]):
        assert region.boxes.tolist() == [f["box"] for f in obj["frames"]]


def test_a_source_word_missing_from_the_source_prompt_fails_before_any_weights(tmp_path):
    cfg = load_config(ROOT / "configs" / "shapes-auto.yaml", ["edits.0.objects.0.source.word=dolphins", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError) as err:
        EditRunner(cfg, progress=False).prepare()
    assert err.value.field == "edits[0].objects[0].source.word"
    with pytest.raises(ConfigError, match="instance") as err:
        load_config(ROOT / "configs" / "shapes-auto.yaml", ["edits.0.objects.0.source.instance=middle"])
    assert err.value.field == "edits[0].objects[0].source.instance"
