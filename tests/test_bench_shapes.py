"""reatco.bench.shapes (scripts/bench_shapes.py) on the shipped shapes model, shrunk to seconds:
every gate runs end to end and writes its keys (the full numbers are in docs/shapes-benchmark.md, from the full
run)."""

import json
from pathlib import Path

import pytest
import torch

from reatco.bench import shapes
from reatco.errors import ConfigError
from reatco.toy.families import FAMILIES
from scripts_loader import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_every_section_runs_and_reports(tmp_path):
    bench = load_script("bench_shapes")
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()  # the script sets its own (--threads)
    try:
        bench.main([
            "--model", str(ROOT / "data" / "shapes-model"), "--config", str(ROOT / "configs" / "shapes.yaml"),
            "--threads", str(threads), "--sections", "vae,text2image,attention,editing,regions",
            "--n_vae", "4", "--n", "2", "--n_attn", "2", "--steps", "3", "--batch", "2",
            "--edit_cases", "1", "--edit_frames", "2", "--edit_tune_steps", "0",
            "--set", "sampling.steps=4", "--set", "rad.refinement_thresholds={}", "--set", "rad.max_update_steps=2",
            "--save_edits", str(tmp_path / "edits"), "--out", str(out),
        ])
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert report["vae"]["psnr_mean"] > 28  # the shipped VAE: 31 dB on held-out images
    assert report["text2image"]["n"] == 2 and 0 <= report["text2image"]["accuracy"] <= 1
    assert 0 < report["attention"]["box_share"] < report["attention"]["mass_in_box"] <= 1
    edit = report["editing"]
    assert edit["n_cases"] == 1 and len(edit["cases"]) == 1
    for run in ("rad_irjs", "no_rad", "no_irjs"):
        assert {"placement", "relation", "shapes", "invariant_psnr", "attention_in_regions",
                "kept_cells_psnr", "cut_cells_psnr", "cut_cells_share"} <= set(edit[run])
        assert (tmp_path / "edits" / f"case00_{run}.png").exists()
    # IRJS keeps what lies outside the regions; without it the background is redrawn
    assert edit["rad_irjs"]["invariant_psnr"] > edit["no_irjs"]["invariant_psnr"] + 5
    # the regions are on the VAE's 4 px grid by default: every invariant pixel is in a kept cell
    irjs, no_irjs = edit["rad_irjs"], edit["no_irjs"]
    assert edit["box_grid"] == 4 and irjs["cut_cells_share"] == 0 and irjs["kept_cells_psnr"] == irjs["invariant_psnr"]
    assert irjs["kept_cells_psnr"] > no_irjs["kept_cells_psnr"] + 5
    # regions found by the model's own attention on the source clip, then the edit with found and true regions
    regions = report["regions"]
    assert regions["backbone"] == "unet" and regions["n_cases"] == 1 and 0 <= regions["iou"] <= 1
    assert regions["placement_passed"] == (regions["placement_gap"] <= 0.05)
    assert len(regions["cases"][0]["found_boxes"]) == 2 and len(regions["cases"][0]["found_boxes"][0]) == 2


def test_tight_boxes_leave_cut_cells_to_the_model(tmp_path):
    threads = torch.get_num_threads()
    try:
        settings = shapes.Settings(
            model=str(ROOT / "data" / "shapes-model"), config=str(ROOT / "configs" / "shapes.yaml"), threads=threads,
            sections="editing", edit_box_grid=1, families="base,keep", edit_cases=1, edit_frames=2, edit_tune_steps=0,
            set=["sampling.steps=4", "rad.refinement_thresholds={}", "rad.max_update_steps=2"])
        results = shapes.run(settings)
    finally:
        torch.set_num_threads(threads)
    edit = results["editing"]
    irjs, no_irjs = edit["rad_irjs"], edit["no_irjs"]
    # IRJS keeps the latent cells it keeps; the cells the box edges cut are the model's, and further off
    assert edit["box_grid"] == 1 and irjs["kept_cells_psnr"] > no_irjs["kept_cells_psnr"] + 5
    assert irjs["cut_cells_psnr"] < irjs["kept_cells_psnr"]
    assert 0 < irjs["cut_cells_share"] == no_irjs["cut_cells_share"] < 0.2
    # each family has its own rows: the kept object is measured where there is one, and the gates are judged
    assert [c["family"] for c in edit["cases"]] == ["base", "keep"] and set(edit["families"]) == {"base", "keep"}
    base, keep = edit["families"]["base"], edit["families"]["keep"]
    assert base["n_cases"] == keep["n_cases"] == 1 and "kept_passed" not in base and "kept_passed" in keep
    assert 0 <= keep["rad_irjs"]["kept"] <= 1 and base["rad_irjs"]["kept"] != base["rad_irjs"]["kept"]  # nan: nothing kept
    for fam in (base, keep):
        assert 0 <= fam["rad_irjs"]["stray_frames"] <= 1 and fam["passed"] == all(v for k, v in fam.items() if k.endswith("_passed"))
    table = shapes.markdown(results)
    assert "| keep (1) |" in table and "| … in the latent cells the box edges cut (" in table


def test_settings_refuse_an_unknown_family_or_section():
    with pytest.raises(ConfigError, match="unknown swirl") as err:
        shapes.Settings(families="cross,swirl")
    assert err.value.field == "families"
    with pytest.raises(ConfigError) as err:
        shapes.Settings(sections="vae,editting")
    assert err.value.field == "sections"


def test_the_script_lists_the_library_sections_and_families():
    bench = load_script("bench_shapes")  # its --help lists them without importing the library
    assert bench.SECTIONS == tuple(shapes.SECTIONS) and bench.FAMILIES == FAMILIES
