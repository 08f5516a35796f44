"""scripts/eval_loveu.py on a fake LOVEU-TGVE root: scores, sharding, resume, bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reatco.errors import ConfigError
from reatco.metrics import clear_cache, frame_consistency, pickscore, text_alignment
from reatco.metrics.loveu import coverage_report, read_loveu_csv

from tiny_models import save_tiny_clip

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "eval_loveu.py"
HEADER = "Video name,Our GT caption,Style Change Caption,Object Change Caption,Background Change Caption,Multiple Changes Caption"
CSV = f"""{HEADER}
DAVIS Videos:,,,,,
gold-fish,Goldfish swim in a tank.,Goldfish in Van Gogh style.,Sharks swim in a tank.,Goldfish swim in the sea.,Sharks swim in the sea in Van Gogh style.
,,,,,
Youtube Videos:,,,,,
cat-dog-play,A cat and a dog play.,A cat and a dog play in anime style.,A fox and a dog play.,A cat and a dog play on the moon.,A fox and a dog play on the moon in anime style.
Videvo Videos:,,,,,
"""
CATS = ("style", "object", "background", "multiple")


def _spec():
    spec = importlib.util.spec_from_file_location("eval_loveu", REPO / "reatco" / "commands" / "eval_loveu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


eval_loveu = _spec()


def _write_frames(folder: Path, rng, n=3, size=24):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("loveu")
    rng = np.random.RandomState(0)
    data = root / "data"
    data.mkdir()
    (data / "LOVEU-TGVE-2023_Dataset.csv").write_text(CSV)
    for subset, video in (("DAVIS_480p", "gold-fish"), ("youtube_480p", "cat-dog-play")):
        _write_frames(data / subset / "480p_frames" / video, rng)
        for cat in CATS:
            _write_frames(root / "pred" / subset / video / cat, rng)
    clear_cache()
    clip = save_tiny_clip(root / "clip")
    yield {"root": root, "data": data, "pred": root / "pred", "clip": str(clip)}
    clear_cache()


def _args(world, out, *extra):
    return ["--data_root", str(world["data"]), "--pred_root", str(world["pred"]), "--out", str(out),
            "--metrics", "clip_text,frame_consistency,pickscore,visor,psnr,lpips", "--clip_model", world["clip"],
            "--pickscore_model", world["clip"], "--pickscore_processor", world["clip"], "--no_run", *extra]


def test_csv_sections_and_partial_copy(world):
    videos = read_loveu_csv(world["data"] / "LOVEU-TGVE-2023_Dataset.csv")
    assert [(v.subset, v.name) for v in videos] == [("DAVIS_480p", "gold-fish"), ("youtube_480p", "cat-dog-play")]
    assert videos[1].prompts["object"] == "A fox and a dog play."
    assert coverage_report(videos) == ["DAVIS_480p: 1 of 16 videos", "youtube_480p: 1 of 23 videos",
                                       "videvo_480p: 0 of 37 videos"]


@pytest.mark.parametrize("text, match", [
    ("Video name,Our GT caption\nDAVIS Videos:,\n", "lacks the column"),
    (f"{HEADER}\ngold-fish,a,b,c,d,e\n", "before any section marker"),
    (f"{HEADER}\nDAVIS Videos:,,,,,\ngold-fish,a,b,,d,e\n", "empty"),
    ("just,some,text\n", "header row"),
])
def test_malformed_csv_names_file_and_line(tmp_path, text, match):
    path = tmp_path / "LOVEU-TGVE-2023_Dataset.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        read_loveu_csv(path)
    assert str(path) in str(err.value)


def test_end_to_end_scores_match_direct_metrics(world, tmp_path, capsys):
    out = tmp_path / "out"
    assert eval_loveu.main(_args(world, out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_edits"] == 8 and sorted(os.listdir(out / "scores"))[0] == "DAVIS_480p__gold-fish__background__default.json"
    texts, consistencies, picks = [], [], []
    for video in read_loveu_csv(world["data"] / "LOVEU-TGVE-2023_Dataset.csv"):
        for cat in CATS:
            folder = world["pred"] / video.subset / video.name / cat
            texts.append(text_alignment(folder, video.prompts[cat], model=world["clip"]))
            consistencies.append(frame_consistency(folder, model=world["clip"]))
            picks.append(pickscore(folder, video.prompts[cat], model=world["clip"], processor=world["clip"]))
    overall = summary["results"]["default"]["overall"]
    assert overall["clip_text"]["mean"] == pytest.approx(np.mean(texts), abs=1e-5)
    assert overall["frame_consistency_x100"]["mean"] == pytest.approx(100 * np.mean(consistencies), abs=1e-4)
    assert overall["pickscore"]["mean"] == pytest.approx(np.mean(picks), abs=1e-5)
    assert summary["results"]["default"]["style"]["n_edits"] == 2
    assert overall["psnr"]["n"] == 0 and overall["oa"]["n"] == 0  # LOVEU rows have no regions
    tables = (out / "tables.md").read_text()
    assert "92.40" in tables and "27.12" in tables and "20.36" in tables and "— style" in tables
    assert "partial LOVEU-TGVE copy" in capsys.readouterr().err


def test_resume_skips_finished_edits(world, tmp_path, capsys):
    out = tmp_path / "out"
    assert eval_loveu.main(_args(world, out, "--limit", "3")) == 0
    first = {p.name: p.stat().st_mtime_ns for p in (out / "scores").iterdir()}
    assert len(first) == 3 and json.loads((out / "summary.json").read_text())["n_edits"] == 3
    capsys.readouterr()
    assert eval_loveu.main(_args(world, out)) == 0
    assert "scored 5 edit(s), reused 3" in capsys.readouterr().err
    again = {p.name: p.stat().st_mtime_ns for p in (out / "scores").iterdir()}
    assert len(again) == 8 and all(again[name] == mtime for name, mtime in first.items())
    # a torn or stale file is recomputed, not trusted
    torn = out / "scores" / next(iter(first))
    torn.write_text("{")
    assert eval_loveu.main(_args(world, out)) == 0
    assert "scored 1 edit(s), reused 7" in capsys.readouterr().err


def test_two_cpu_processes_give_the_same_summary(world, tmp_path):
    """Same edits, same keys, same values. Values are compared to 1e-6 relative (1e-5 absolute): float32 CLIP on CPU
    differs in the last bits between processes (kernel choice depends on memory alignment)."""
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    assert eval_loveu.main(_args(world, one)) == 0
    # `--cpu` makes accelerate use its single-process launcher; `--multi_gpu` is its torchrun launcher,
    # and the script asks PartialState for a CPU (gloo) group when CUDA is absent.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(29500 + os.getpid() % 1000),
           str(SCRIPT), *_args(world, two)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[process 0/2] scored 4" in proc.stderr and "[process 1/2] scored 4" in proc.stderr
    _assert_same(json.loads((one / "summary.json").read_text()), json.loads((two / "summary.json").read_text()))
    assert (one / "tables.md").read_text() == (two / "tables.md").read_text()


def _assert_same(a, b, path="summary"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-5), path
    else:
        assert a == b, path


@pytest.mark.parametrize("case, match", [
    ("no_data_root", "--data_root: folder"),
    ("malformed_csv", "before any section marker"),
    ("missing_video", "480p_frames/cat-dog-play"),
    ("missing_prediction", "--pred_root: no predicted frames"),
    ("unknown_metric", "--metrics: unknown metric"),
    ("unknown_category", "--categories"),
])
def test_bad_input_exits_2_before_loading_models(world, tmp_path, capsys, case, match):
    import shutil

    data, pred = tmp_path / "data", tmp_path / "pred"
    shutil.copytree(world["data"], data)
    shutil.copytree(world["pred"], pred)
    args = ["--data_root", str(data), "--pred_root", str(pred), "--out", str(tmp_path / "out"), "--no_run",
            "--clip_model", str(tmp_path / "no-such-model")]  # loading it would fail differently
    if case == "no_data_root":
        args[1] = str(tmp_path / "nowhere")
    elif case == "malformed_csv":
        (data / "LOVEU-TGVE-2023_Dataset.csv").write_text(f"{HEADER}\ngold-fish,a,b,c,d,e\n")
    elif case == "missing_video":
        shutil.rmtree(data / "youtube_480p" / "480p_frames" / "cat-dog-play")
    elif case == "missing_prediction":
        shutil.rmtree(pred / "DAVIS_480p" / "gold-fish" / "object")
    elif case == "unknown_metric":
        args += ["--metrics", "clip_text,fvd"]
    elif case == "unknown_category":
        args += ["--categories", "style,colour"]
    assert eval_loveu.main(args) == 2
    err = capsys.readouterr().err
    assert match in err and err.startswith("error: ")
    assert not (tmp_path / "out").exists()  # nothing written


def test_help_documents_every_flag():
    text = eval_loveu.build_parser().format_help()
    for flag in ("--data_root", "--configs", "--pred_root", "--out", "--metrics", "--clip_model", "--clip_backend",
                 "--pickscore_model", "--pickscore_processor", "--owlvit_model", "--subsets", "--categories",
                 "--limit", "--ablation"):
        assert flag in text
    for action in eval_loveu.build_parser()._actions:
        assert action.help, action.dest


def test_score_edit_with_regions_runs_visor_and_fidelity(tmp_path):
    """A config edit's inputs (source frames + region masks) reach VISOR, PSNR and LPIPS."""
    from reatco.metrics import evaluate as ev
    from reatco.metrics.fidelity import invariant_mask, masked_psnr

    from tiny_models import save_tiny_owlvit

    owl = str(save_tiny_owlvit(tmp_path / "owl"))
    rng = np.random.RandomState(4)
    source = rng.randint(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    masks = np.zeros((2, 2, 64, 64), bool)
    masks[0, :, 20:40, 4:24], masks[1, :, 20:40, 40:60] = True, True
    edited = source.copy()
    edited[masks.any(0)] = 0
    edit = ev.EvalEdit("configs", "dolphins", "jellyfish-goldfish", "full", "A jellyfish and a goldfish swim.",
                       "Two dolphins swim.", "clip.mp4", "dolphins.yaml", 0, ("jellyfish", "goldfish"))
    settings = ev.Settings("unused", owlvit_model=owl, lpips_backbone="random", device="cpu")
    values = ev.score_edit(edit, ev.EditInputs(edited, source, masks, edit.objects), ("visor", "psnr", "lpips"), settings)
    assert values["visor_relation"] == ["jellyfish", "left", "goldfish"]  # from the regions' centres
    assert 0 <= values["oa"] <= 100 and values["psnr"] == float("inf")
    assert values["lpips"] >= 0  # receptive fields near the regions still see the change
    noisy = edited.copy()
    noisy[:, 0, 0] = 255 - noisy[:, 0, 0]
    values = ev.score_edit(edit, ev.EditInputs(noisy, source, masks, edit.objects), ("psnr",), settings)
    assert values["psnr"] == pytest.approx(masked_psnr(noisy, source, invariant_mask(masks)))
    phrase = ev.EvalEdit(*[getattr(edit, f) for f in ("subset", "video", "category", "variant")],
                         "A jellyfish and a goldfish, with the goldfish above the jellyfish", "", "", None, None, ())
    assert ev.expected_relation(phrase.prompt, (), None) == ("goldfish", "above", "jellyfish")


def test_missing_predictions_are_edited_then_scored(world, tmp_path, capsys):
    """Without predictions, the edit runner produces them (official layout) before scoring."""
    import yaml

    from tiny_models import save_tiny_sd

    model = save_tiny_sd(tmp_path / "sd")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "model": {"pretrained": str(model), "attention_cell_px": 8},
        "tune": {"enabled": False},
        "sampling": {"steps": 2, "guidance_scale": 2.0},
        "rad": {"refinement_thresholds": {}},
    }))
    pred, out = tmp_path / "pred", tmp_path / "out"
    args = ["--data_root", str(world["data"]), "--pred_root", str(pred), "--out", str(out), "--metrics", "clip_text",
            "--clip_model", world["clip"], "--base_config", str(base), "--height", "32", "--width", "32", "--limit", "2"]
    assert eval_loveu.main(args) == 0
    made = sorted(p.relative_to(pred).parent for p in pred.rglob("00000.jpg"))
    assert made == [Path("DAVIS_480p/gold-fish/background"), Path("DAVIS_480p/gold-fish/multiple")]
    frames = sorted((pred / made[0]).glob("*.jpg"))
    assert len(frames) == 3 and Image.open(frames[0]).size == (480, 480)
    assert json.loads((out / "summary.json").read_text())["n_edits"] == 2


def test_scores_follow_the_frames_they_scored(world, tmp_path, capsys):
    """Changed predictions are scored again (even in place, under the same names); another
    --pred_root with other frames does not inherit the old scores."""
    import shutil

    out, pred = tmp_path / "out", tmp_path / "pred"
    shutil.copytree(world["pred"], pred)
    args = _args(world, out, "--metrics", "clip_text", "--limit", "2")
    args[args.index("--pred_root") + 1] = str(pred)
    assert eval_loveu.main(args) == 0
    first = json.loads((out / "summary.json").read_text())["edits"]
    capsys.readouterr()
    black = tmp_path / "black"
    for folder in sorted(pred.rglob("*")):
        if folder.suffix == ".jpg":
            target = black / folder.relative_to(pred)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(target)
    args[args.index("--pred_root") + 1] = str(black)
    assert eval_loveu.main(args) == 0
    assert "scored 2 edit(s), reused 0" in capsys.readouterr().err
    second = json.loads((out / "summary.json").read_text())["edits"]
    assert all(second[k]["clip_text"] != first[k]["clip_text"] for k in first)
    # the same frames again: reused
    assert eval_loveu.main(args) == 0
    assert "scored 0 edit(s), reused 2" in capsys.readouterr().err


def test_runs_with_different_metrics_on_one_out_keep_both(world, tmp_path, capsys):
    out = tmp_path / "out"
    clip = _args(world, out, "--metrics", "clip_text", "--limit", "2")
    pick = _args(world, out, "--metrics", "pickscore", "--limit", "2")
    assert eval_loveu.main(clip) == 0 and eval_loveu.main(pick) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"] == ["clip_text", "pickscore"]
    for record in (json.loads(p.read_text()) for p in (out / "scores").glob("*.json")):
        assert record["metrics_run"] == ["clip_text", "pickscore"] and {"clip_text", "pickscore"} <= set(record["scores"])
    capsys.readouterr()
    assert eval_loveu.main(clip) == 0 and "reused 2" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../../../../escaped", "..", "a/b", ".hidden", "/abs"])
def test_a_csv_video_name_cannot_leave_the_folders(world, tmp_path, capsys, name):
    import shutil

    data = tmp_path / "deep" / "data"
    shutil.copytree(world["data"], data)
    csv_text = (data / "LOVEU-TGVE-2023_Dataset.csv").read_text().replace("gold-fish,", f"{name},", 1)
    (data / "LOVEU-TGVE-2023_Dataset.csv").write_text(csv_text)
    before = sorted(p for p in tmp_path.rglob("*"))
    out = tmp_path / "deep" / "out"
    args = _args(world, out)
    args[args.index("--data_root") + 1] = str(data)
    assert eval_loveu.main(args) == 2
    assert "cannot be used as a folder name" in capsys.readouterr().err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere


def test_out_that_is_a_file_and_a_missing_model_folder_exit_2(world, tmp_path, capsys):
    out_file = tmp_path / "out.txt"
    out_file.write_text("keep me")
    assert eval_loveu.main(_args(world, out_file)) == 2
    assert "--out" in capsys.readouterr().err and out_file.read_text() == "keep me"
    args = _args(world, tmp_path / "out")
    args[args.index("--clip_model") + 1] = str(tmp_path / "no-such-clip")
    assert eval_loveu.main(args) == 2
    assert "--clip_model" in capsys.readouterr().err and not (tmp_path / "out").exists()
