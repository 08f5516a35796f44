"""reatco/bench/wan.py: the memory meter, the parameter counts and the whole-edit arithmetic."""

import pytest
import torch

from reatco.bench import wan


def test_live_tensor_meter_counts_what_is_alive():
    meter = wan.LiveTensorMeter()
    with meter:
        a = torch.ones(1000, 250)  # 1 MB
        b = a * 2  # 2 MB alive
        del a
        c = b + 1  # a freed first: still 2 MB at most
        del b, c
    assert meter.peak == 2 * 1_000_000 and meter.current == 0


def test_released_models_parameter_counts():
    w = wan.weights_gb(dtype_bytes=1)
    assert 1.3 <= w["transformer_1.3B"] * 1024**3 / 1e9 <= 1.5  # Wan 2.1 "1.3B"
    assert 13.5 <= w["transformer_14B"] * 1024**3 / 1e9 <= 14.5
    assert 5.5 <= w["text_encoder_umt5_xxl"] * 1024**3 / 1e9 <= 6.0  # umT5-XXL's encoder


def test_whole_edit_arithmetic():
    fit = wan.TransformerFit("1.3B", forward_per_token=1000, rad_block_per_token=100, rad_transient_per_token=10,
                             ckpt_block_per_token=20, ckpt_transient_per_token=5, tokens=(1, 2))
    vae = {"encode": 1.0, "decode": 2.0, "encode_fixed": 0.0, "decode_fixed": 0.0}
    weights = {"transformer_1.3B": 1.0, "vae": 0.5}
    e = wan.estimate(fit, vae, weights, rad_steps=0)
    assert e["tokens"] == 21 * 30 * 52 and e["rad_pass_blocks"] == 21  # blocks 15…20 of 30
    t = e["time_vs_plain_sampling"]
    assert t["inversion_free"] == 1.0 and t["inversion"] == 1.5  # the inversion: one call a step, sampling two
    resident = e["resident_gb"]
    assert e["stage_peak_gb"]["rad_pass"] == pytest.approx(resident + (21 * 100 + 10) * 32760 / 1024**3)
    assert e["stage_peak_gb"]["decode"] == pytest.approx(resident + 2.0 * 480 * 832 / 1024**3)
    with_rad = wan.estimate(fit, vae, weights, rad_steps=25)["time_vs_plain_sampling"]
    cost = wan.pass_cost_flops("1.3B", 32760, checkpointed=True)
    assert with_rad["inversion_free_checkpointed"] == pytest.approx(1 + 25 * 21 * cost / (50 * 2 * 30))
