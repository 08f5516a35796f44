"""reatco.metrics.loveu_run, the checks and predictions behind scripts/eval_loveu.py, called directly."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from reatco.errors import ConfigError
from reatco.metrics import loveu_run
from reatco.metrics.evaluate import EvalEdit


def _edit(video, category, prompt, variant="default"):
    return EvalEdit("DAVIS_480p", video, category, variant, prompt, f"{video} source", f"/data/{video}")


def test_check_out_names_the_flag(tmp_path):
    loveu_run.check_out(tmp_path / "new" / "deeper")  # creatable: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="--out.*is a file"):
        loveu_run.check_out(tmp_path / "file")


def test_a_local_model_path_must_exist_a_hub_id_need_not(tmp_path):
    assert loveu_run.looks_local("./clip") and loveu_run.looks_local("/models/clip") and loveu_run.looks_local("a/b/c")
    assert not loveu_run.looks_local("openai/clip-vit-large-patch14")
    args = SimpleNamespace(clip_model="openai/clip-vit-large-patch14", clip_backend="transformers",
                           pickscore_model=str(tmp_path / "missing"), pickscore_processor="org/proc", owlvit_model="x")
    loveu_run.check_model_folders(args, ("clip_text",))
    with pytest.raises(ConfigError, match="--pickscore_model"):
        loveu_run.check_model_folders(args, ("clip_text", "pickscore"))


def test_collect_edits_needs_a_source_and_a_positive_limit(tmp_path):
    args = SimpleNamespace(data_root=None, configs=[], ablation=False, limit=None)
    with pytest.raises(ConfigError, match="--data_root"):
        loveu_run.collect_edits(args)
    args.configs = [str(tmp_path / "absent.yaml")]
    with pytest.raises(ConfigError, match="--configs"):
        loveu_run.collect_edits(args)


def test_one_loveu_config_per_video_holds_all_its_prompts(tmp_path):
    source = tmp_path / "frames"
    source.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(source / f"{i:05d}.jpg")
    edits = [_edit("fish", "style", "fish, Van Gogh"), _edit("fish", "object", "sharks"), _edit("cat", "style", "anime cat")]
    edits = [EvalEdit(**{**e.__dict__, "source": str(source)}) for e in edits]
    prompts = loveu_run.loveu_prompts(edits)
    assert sorted(prompts) == [("DAVIS_480p", "cat"), ("DAVIS_480p", "fish")]
    args = SimpleNamespace(out=str(tmp_path / "out"), base_config="configs/base.yaml", height=64, width=96)
    path = loveu_run.loveu_config_path(args, edits[0], prompts)
    data = json.loads(Path(path).read_text())
    assert path == tmp_path / "out" / "configs" / "DAVIS_480p" / "fish.yaml"
    assert data["edits"] == [{"name": "object", "prompt": "sharks", "objects": []},
                             {"name": "style", "prompt": "fish, Van Gogh", "objects": []}]
    assert data["video"]["n_frames"] == 2 and (data["video"]["height"], data["video"]["width"]) == (64, 96)
    assert data["irjs"] == {"enabled": False}
