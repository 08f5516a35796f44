"""bench_wan's measured mode (reatco/bench/wan_measured.py) on a CPU: the tiny architecture at a tiny
size runs plain WanPipeline sampling and a whole WanReAtCoPipeline edit end to end and reports each
stage; bad flags exit 2 before anything is built."""

from __future__ import annotations

import json
import math

import pytest
import torch

from reatco.bench import wan, wan_measured
from reatco.commands import bench_wan

PLAIN_STAGES = {"text_encode", "denoise_steps", "vae_decode", "other"}
EDIT_STAGES = {"text_encode", "vae_encode", "inversion", "rad_steps", "denoise_steps", "vae_decode", "other"}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "measured.json"
    argv = ["--out", str(out), "--measure", "--arch", "tiny", "--frames", "5", "--height", "32", "--width", "48",
            "--steps", "3", "--rad_steps", "2"]
    assert bench_wan.main(argv) == 0
    return json.loads(out.read_text())


def test_measured_mode_reports_every_stage_with_finite_positive_numbers(measured):
    assert measured["measured"] is True and len(measured["runs"]) == 1
    report = measured["runs"][0]
    assert report["measured"] is True and report["device_name"] == "CPU" and report["arch"] == "tiny"
    for kind, names in (("plain", PLAIN_STAGES), ("edit", EDIT_STAGES)):
        run = report[kind]
        assert set(run["stages"]) == names
        assert run["frames_shape"] == [1, 5, 32, 48, 3]  # the whole clip came out of each run
        for name, stage in run["stages"].items():
            assert math.isfinite(stage["seconds"]) and (stage["seconds"] > 0 or name == "other")
            if name != "other":
                assert math.isfinite(stage["peak_gb"]) and stage["peak_gb"] > 0
        assert sum(s["seconds"] for s in run["stages"].values()) == pytest.approx(run["seconds"])
        assert run["peak_gb"] == max(s["peak_gb"] for s in run["stages"].values() if s["peak_gb"] is not None)
    edit, plain = report["edit"]["stages"], report["plain"]["stages"]
    # the prompt and the negative one; the edit also the source's. RAD on 2 of 3 steps.
    assert plain["text_encode"]["calls"] == 2 and edit["text_encode"]["calls"] == 3
    assert plain["denoise_steps"]["calls"] == 3 and "rad_steps" not in plain
    assert edit["rad_steps"]["calls"] == 2 and edit["denoise_steps"]["calls"] == 1
    assert edit["inversion"]["calls"] == edit["vae_encode"]["calls"] == edit["vae_decode"]["calls"] == 1
    # the weights are resident in every stage's peak
    weights = sum(report["weights_gb"].values())
    assert all(s["peak_gb"] > weights for s in edit.values() if s["peak_gb"] is not None)


def test_ratio_and_targets_are_those_of_the_measured_runs(measured):
    report = measured["runs"][0]
    assert report["edit_vs_plain_time"] == pytest.approx(report["edit"]["seconds"] / report["plain"]["seconds"])
    assert report["time_target"] == 1.6 and report["time_target_met"] == (report["edit_vs_plain_time"] <= 1.6)
    assert report["edit_peak_gb"] == report["edit"]["peak_gb"]
    assert report["memory_target_gb"] == 24 and report["memory_target_met"] is True
    without = (report["edit"]["seconds"] - report["edit"]["stages"]["inversion"]["seconds"]) / report["plain"]["seconds"]
    assert report["edit_without_inversion_vs_plain_time"] == pytest.approx(without)
    text = wan_measured.markdown(report)
    assert "**measured** on CPU" in text and f"{report['edit_vs_plain_time']:.3f}×" in text


def test_stage_clock_adds_calls_keeps_the_peak_and_counts_the_resident_weights():
    meter = wan.LiveTensorMeter()
    clock = wan_measured.StageClock(torch.device("cpu"), meter, resident=1000)
    with meter:
        with clock.stage("a"):
            x = torch.ones(250_000)  # 1 MB
        with clock.stage("a"):
            y = torch.ones(125_000)  # 0.5 MB more: 1.5 MB alive at the peak
        del x, y
        with clock.stage("b"):
            pass
    a, b = clock.stages["a"], clock.stages["b"]
    assert a["calls"] == 2 and a["peak_gb"] * wan.GB == 1000 + 1_500_000
    assert b["peak_gb"] * wan.GB == 1000  # nothing alive but the weights
    weight = torch.ones(1000)
    meter = wan.LiveTensorMeter(known=[weight])
    with meter:
        view = weight.t()  # a view of a weight is not new memory
        twice = weight * 2
    assert meter.peak == 4000 and view.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
    del twice
    with pytest.raises(RuntimeError, match="inside"):
        clock.start("c")
        clock.start("d")


class _MovesRecorded(torch.nn.Linear):
    def __init__(self):
        super().__init__(2, 2)
        self.moves = []

    def to(self, *args, **kwargs):
        self.moves.append(args)
        return super().to(*args, **kwargs)


def test_offload_moves_the_text_encoder_after_the_runs_last_prompt_and_stages_restore():
    class VAE(torch.nn.Module):
        def encode(self, x):
            return x

        def decode(self, x):
            return x

    class Pipe:
        text_encoder, transformer, vae = _MovesRecorded(), torch.nn.Linear(2, 2), VAE()

    pipe = Pipe()
    clock = wan_measured.StageClock(torch.device("cpu"))
    probe = wan_measured._RunProbe(pipe, clock, lambda i: i == 0, steps=2, offload_after=2)
    with probe.installed():
        pipe.text_encoder(torch.zeros(2))
        assert pipe.text_encoder.moves == []
        pipe.text_encoder(torch.zeros(2))
        assert pipe.text_encoder.moves == [("cpu",)]  # after the second encode
        pipe.vae.encode(1)
        pipe.transformer(torch.zeros(2))  # the loop's first call opens step 0, a RAD step
        probe.step_end(pipe, 0, 0, {})
        pipe.transformer(torch.zeros(2))
        probe.step_end(pipe, 1, 0, {})
        pipe.vae.decode(1)
    assert {k: v["calls"] for k, v in clock.stages.items()} == {"text_encode": 2, "vae_encode": 1, "rad_steps": 1,
                                                                 "denoise_steps": 1, "vae_decode": 1}
    assert "encode" not in vars(pipe.vae) and not pipe.text_encoder._forward_hooks  # restored


@pytest.mark.parametrize("argv, message", [
    (["--measure", "--frames", "6"], "--frames must be 4k + 1"),
    (["--measure", "--height", "40"], "--height must be a positive multiple of 16"),
    (["--measure", "--height", "32", "--width", "32"], "box [2, 8, 14, 24] is under one 16-px token a side"),
    (["--measure", "--steps", "3", "--rad_steps", "4"], "--rad_steps must be between 0 and --steps (3)"),
    (["--measure", "--steps", "0"], "--steps must be ≥ 1"),
    (["--measure", "--warmup_steps", "0"], "--warmup_steps must be ≥ 1"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    (["--measure", "--offload_text_encoder"], "--offload_text_encoder moves the text encoder off the GPU"),
    (["--gradient_checkpointing"], "--gradient_checkpointing belong to the measured mode"),
    (["--arch", "tiny"], "--arch tiny is for the measured mode"),
    (["--measure", "--arch", "tiny", "--text_encoder", "umt5-xxl"], "--text_encoder umt5-xxl gives 4096-wide text"),
    (["--measure", "--smoke"], "--smoke is the estimated mode's"),
])
def test_bad_flags_exit_2_naming_the_flag_before_anything_is_built(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(wan_measured, "build_components", lambda *a: pytest.fail("built a model"))
    with pytest.raises(SystemExit) as exit_:
        bench_wan.main(["--out", str(tmp_path / "r.json"), *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_cuda_without_a_gpu_exits_2_before_anything_is_built(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(wan_measured, "build_components", lambda *a: pytest.fail("built a model"))
    assert bench_wan.main(["--out", str(tmp_path / "r.json"), "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device is visible here" in capsys.readouterr().err


def test_command_line_names_equal_the_bench_modules():
    assert bench_wan.ARCHS == wan_measured.ARCHS and bench_wan.TEXT_ENCODERS == wan_measured.TEXT_ENCODERS
    assert bench_wan.TARGET == wan.TARGET == (wan_measured.MeasureSettings.frames, wan_measured.MeasureSettings.height,
                                              wan_measured.MeasureSettings.width)
    assert set(wan_measured.ARCHS) - {"tiny"} == set(wan.WAN_TRANSFORMERS)


def test_the_gpu_script_is_valid_bash_and_its_bench_commands_parse():
    import re
    import shlex
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check_wan.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text().replace("\\\n", " ")
    commands = [shlex.split(line.split("reatco.commands.bench_wan", 1)[1].replace('"$out"', "out"))
                for line in text.splitlines() if re.match(r"\s*timeout \d+ python -m reatco.commands.bench_wan", line)]
    assert len(commands) == 2
    for argv in commands:
        args = bench_wan.parse_args(argv)
        assert args.measure and args.device == "cuda" and args.arch == ["1.3B"]
        assert (args.frames, args.height, args.width) == wan.TARGET and args.dtype == "bfloat16"
    assert commands[0].count("--gradient_checkpointing") == 1 and "--gradient_checkpointing" not in commands[1]


def test_released_architectures_build_in_the_dtype_with_the_float32_modules_kept():
    """On the meta device (no memory): 1.3B with umT5-XXL's architecture, bf16 but for what
    from_pretrained(torch_dtype=bf16) keeps in float32."""
    c = wan_measured.build_components(wan_measured.MeasureSettings(arch="1.3B", device="meta", dtype="bfloat16"))
    transformer, encoder = c["transformer"], c["text_encoder"]
    assert len(transformer.blocks) == 30 and transformer.config.text_dim == encoder.config.d_model == 4096
    assert 5.5e9 <= sum(p.numel() for p in encoder.parameters()) <= 6.0e9  # umT5-XXL's encoder
    for model in (transformer, encoder, c["vae"]):
        keep = model._keep_in_fp32_modules or []
        for name, p in model.named_parameters():
            expected = torch.float32 if any(k in name.split(".") for k in keep) else torch.bfloat16
            assert p.dtype == expected and p.device.type == "meta", name
    assert any(p.dtype == torch.float32 for p in transformer.parameters())  # scale_shift_table, norms, time_embedder
    assert torch.get_default_dtype() == torch.float32  # restored after building


def test_inversion_free_edit_has_no_inversion_stage_and_encodes_two_prompts():
    settings = wan_measured.MeasureSettings(arch="tiny", frames=5, height=32, width=48, steps=2, rad_steps=1,
                                            inversion=False)
    report = wan_measured.measure(settings)
    edit = report["edit"]["stages"]
    assert set(edit) == EDIT_STAGES - {"inversion"} and edit["text_encode"]["calls"] == 2
    assert report["edit_without_inversion_vs_plain_time"] == report["edit_vs_plain_time"]
    assert "inversion-free start" in wan_measured.markdown(report)
