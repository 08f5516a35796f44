"""reatco.bench.rad (scripts/bench_rad.py): the smoke mode writes every key; early stop leaves the
recorded maps as they are (the fast-pass gradient equality is in test_pipeline.py)."""

import json

import pytest
import torch

from reatco.backbones.tav.recording import record_cross_attention
from reatco.rad.attention_maps import AttentionStore, RADForwardComplete
from reatco.bench import rad
from reatco.config import TuneConfig
from reatco.errors import ConfigError
from reatco.backbones.tav import TuneAVideoUNet, rad_attention_layers
from scripts_loader import load_script

from tiny_models import TINY_VAE_SCALE_FACTOR, tiny_unet2d


def test_smoke_run_writes_every_key(tmp_path):
    out = tmp_path / "bench.json"
    load_script("bench_rad").main(["--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    for key in ("command", "settings", "machine", "per_update", "grad_max_rel_diff", "per_step", "whole_edit", "whole_edit_ratio", "first_edit_ratio",
                "fast_over_plain_per_step", "ratios", "memory_fit", "max_frames_24gb", "memory_table", "targets", "markdown"):
        assert key in report, key
    for variant in ("official", "fast", "fast_ckpt"):
        row = report["per_update"][variant]
        assert row["sec_per_update"] > 0
        assert {"peak_mb", "peak_delta_mb", "model_mb", "by_frames"} <= set(row)
        assert set(row["by_frames"]) == {"2", "3"}
    # the same computation: float32 rounding at most (identical on the tiny model)
    assert report["grad_max_rel_diff"]["fast"] <= 1e-5
    assert report["grad_max_rel_diff"]["fast_ckpt"] <= 1e-5
    assert report["per_step"]["plain"]["sec_per_step"] > 0
    assert {"sec_per_step_update", "sec_per_step_nonupdate"} <= set(report["per_step"]["fast"])
    edit = report["whole_edit"]
    assert edit["n_windows"] == 13 and edit["clip_frames"] == 16 and edit["extrapolated"]
    assert {"official_sec", "fast_sec", "plain_sec", "refinement_iters_per_step", "refinement_iters_source", "how"} <= set(edit)
    assert report["whole_edit_ratio"] == pytest.approx(edit["fast_sec"] / edit["official_sec"])
    for variant in ("official", "fast_ckpt"):
        assert report["max_frames_24gb"][variant]["estimated"] is True
        assert isinstance(report["max_frames_24gb"][variant]["frames"], int)
    table = report["memory_table"]["table"]
    assert set(table) == {"512x512", "448x768"}
    assert all(set(rows) == {"8", "16", "24"} for rows in table.values())
    names = {row["target"] for row in report["targets"]}
    assert {"whole_edit_ratio", "fast_over_plain_per_step", "update_time_fast_over_official", "update_peak_fast_over_official",
            "update_peak_fast_ckpt_over_official", "max_frames_24gb_fast_ckpt", "grad_max_rel_diff_fast"} <= names
    assert "| whole_edit_ratio |" in report["markdown"] and "| first_edit_ratio |" in report["markdown"]
    # plain and fast non-update steps are one measurement of the same CFG call
    for row in report["per_step"]["by_frames"].values():
        assert row["plain"] == row["fast_nonupdate_step"]
    assert edit["tune_steps"] == (TuneConfig().steps if TuneConfig().enabled else 0) and edit["official_tune_steps"] == 200 and edit["tune_step_sec"] > 0
    assert "runs out" not in json.dumps(report) and "fits 4" not in json.dumps(report)


def test_whole_edit_follows_the_schedule():
    # every kind of call costs 1 s per frame: official = 13 windows × (25 × (4 + 4) + 25 × (4 + 4) + 3 × (5 × 12 + 4))
    per_frame = {2: 2.0, 4: 4.0}
    costs = {name: dict(per_frame) for name in
             ("official_update", "official_grad_forward", "official_discarded_forward", "fast_update", "cfg_call", "tune_step")}
    args = rad.Settings(clip_frames=16, window=4, stride=1, steps=50, max_update_steps=25, refinement_iters=5, refinement_iters_source="test",
                     tune_steps=30, official_tune_steps=200)
    edit = rad.whole_edit(costs, args)
    assert edit["official_sec"] == pytest.approx(13 * (50 * 8 + 3 * (5 * 12 + 4)))
    assert edit["fast_sec"] == pytest.approx(25 * 32 + 25 * 16 + 3 * 5 * 16)
    assert edit["plain_sec"] == pytest.approx(50 * 16)
    # first edit: tuning (a step costs 16 s on the 16-frame clip) + the edit
    assert edit["official_first_edit_sec"] == pytest.approx(200 * 16 + edit["official_sec"])
    assert edit["fast_first_edit_sec"] == pytest.approx(30 * 16 + edit["fast_sec"])
    assert edit["first_edit_ratio"] == pytest.approx(edit["fast_first_edit_sec"] / edit["official_first_edit_sec"])
    assert edit["costs"]["fast_update@16"] == {"sec": pytest.approx(16.0), "measured": False}
    assert edit["costs"]["official_update@4"]["measured"] is True


def test_stopping_the_forward_early_leaves_the_recorded_maps_identical():
    unet = TuneAVideoUNet.from_unet2d(tiny_unet2d()).eval()
    # 4 px cells: down_blocks.1 and up_blocks.1 (the SD-like pattern), with up_blocks.2 after them
    layers = rad_attention_layers(unet, TINY_VAE_SCALE_FACTOR, 2 * TINY_VAE_SCALE_FACTOR)
    last_block = max(int(name.split(".")[1]) for name in layers if name.startswith("up_blocks."))
    later_calls = []
    hooks = [block.register_forward_pre_hook(lambda *a: later_calls.append(1)) for block in unet.up_blocks[last_block + 1 :]]
    assert hooks, "the tiny model must have up blocks after the last recorded one"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 16, 16, generator=g)
    cond = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    maps = {}
    try:
        for early in (False, True):
            store = AttentionStore(grid=(8, 8), stop_early=early)
            with record_cross_attention(unet, layers, store), torch.no_grad():
                later_calls.clear()
                with store.recording("record"):
                    try:
                        unet(x, 500, encoder_hidden_states=cond)
                        stopped = False
                    except RADForwardComplete:
                        stopped = True
                assert stopped is early
                assert store.n_recorded == len(layers)
                assert bool(later_calls) is not early  # an early stop runs nothing after the last recorded layer
                maps[early] = store.maps()
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(maps[True], maps[False])


def test_settings_resolve_the_smoke_sizes_and_refuse_sizes_off_the_grid():
    smoke = rad.resolve(rad.Settings(smoke=True, height=512))
    assert (smoke.height, smoke.width, smoke.frames, smoke.repeats, smoke.threads, smoke.clock) == (64, 64, [2, 3], 1, 1, "cpu")
    assert rad.resolve(smoke) == smoke  # resolving twice changes nothing
    assert rad.resolve(rad.Settings(frames=[4, 2, 4])).frames == [2, 4]
    with pytest.raises(ConfigError, match="multiples of cell_px 32"):
        rad.resolve(rad.Settings(height=250))
