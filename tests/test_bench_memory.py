"""scripts/bench_memory.py / reatco.bench.memory: the smoke run writes every key; the whole-run
model picks the stage that needs most and the frame limit it implies."""

import json

import pytest

from reatco.bench import memory
from scripts_loader import load_script


def test_smoke_run_writes_every_key(tmp_path):
    script = load_script("bench_memory")
    out = tmp_path / "memory.json"
    script.main(["--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["estimated"] is True
    assert set(report["stages"]) == set(memory.STAGES)
    for stage in memory.STAGES:
        assert set(report["stages"][stage]) == {"fixed_mb", "per_frame_mb"}
        assert set(report["measurements"][stage]) == {"1", "2"}
        assert all(row["delta_mb"] >= 0 for row in report["measurements"][stage].values())
    assert set(report["whole_run"]) == {"8", "16", "24", "32"}
    for row in report["whole_run"].values():
        assert set(row) >= {"peak_mb", "limiting_stage"} and row["limiting_stage"] in memory.PROFILES["default"]
    assert isinstance(report["max_frames_24gb"], int) and isinstance(report["max_frames_24gb_checkpointed"], int)
    assert "| max in 24 GB |" in report["markdown"]
    assert script.STAGES == tuple(memory.STAGES)  # the script's --help list is the library's


def _accounting():
    return memory.Accounting(unet_params=1000 * 2**20 // 2, vae_params=0, text_encoder_params=0, trainable_params=0)


def test_whole_run_is_the_largest_stage_with_its_resident_weights():
    acc = _accounting()  # 1000 MB of fp16 UNet weights for the edit stages, 2000 MB of float32 for tuning
    fits = {"encode": {"fixed_mb": 100.0, "per_frame_mb": 0.0},
            "tune_step": {"fixed_mb": 0.0, "per_frame_mb": 10.0},
            "cfg_step": {"fixed_mb": 0.0, "per_frame_mb": 200.0}}
    traj = acc.resident_mb("unet", 1) - 1000  # the inversion trajectory, per frame
    small = memory.whole_run(fits, acc, ("encode", "tune_step", "cfg_step"), 4)
    assert small["limiting_stage"] == "tune_step" and small["peak_mb"] == round(2000 + 40)
    big = memory.whole_run(fits, acc, ("encode", "tune_step", "cfg_step"), 16)
    assert big["limiting_stage"] == "cfg_step" and big["peak_mb"] == round(1000 + 16 * traj + 3200)
    n = memory.max_frames(fits, acc, ("encode", "tune_step", "cfg_step"))
    budget = memory.GPU_BUDGET_MB - memory.CUDA_RESERVE_MB
    assert memory.whole_run(fits, acc, ("encode", "tune_step", "cfg_step"), n)["peak_mb"] <= budget
    assert memory.whole_run(fits, acc, ("encode", "tune_step", "cfg_step"), n + 1)["peak_mb"] > budget


def test_fits_scale_by_pixels_and_bytes_and_keep_the_parameter_state_out():
    s = memory.Settings(height=224, width=384, dtype="float32")  # a quarter of 448×768's pixels, 4-byte elements
    acc = memory.Accounting(unet_params=10, vae_params=0, text_encoder_params=0, trainable_params=2**20)  # 14 MB of state
    results = {"cfg_step": {2: {"delta_mb": 30.0}, 4: {"delta_mb": 50.0}},
               "tune_step": {2: {"delta_mb": 14.0 + 30.0}, 4: {"delta_mb": 14.0 + 50.0}}}
    fits = memory.stage_fits(results, s, acc, measured_on_target=False)
    assert fits["cfg_step"]["fixed_mb"] == pytest.approx(10 * 4 * 0.5) and fits["cfg_step"]["per_frame_mb"] == pytest.approx(10 * 4 * 0.5)
    # the tuning step runs under 16-bit autocast whatever the weights: pixels only
    assert fits["tune_step"]["fixed_mb"] == pytest.approx(10 * 4) and fits["tune_step"]["per_frame_mb"] == pytest.approx(10 * 4)
    assert memory.linear_fit({2: 30.0, 4: 50.0}) == pytest.approx((10.0, 10.0))
