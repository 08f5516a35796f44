"""The shipped shapes-world model (data/shapes-model) through the editing pipeline: it loads like
Stable Diffusion, RAD moves each word's attention into its region, IRJS keeps the rest."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from reatco.config import IRJSConfig, RADConfig
from reatco.pipeline import ReAtCoPipeline
from reatco.metrics.fidelity import masked_psnr as psnr
from reatco.toy.editing import make_edit_case, placement_scores, region_attention_mass

MODEL = Path(__file__).resolve().parents[1] / "data" / "shapes-model"
STEPS = 20


@pytest.fixture(scope="module")
def edit():
    """One 4-frame case of the editing benchmark, encoded and inverted once (untuned UNet)."""
    pipe = ReAtCoPipeline.from_pretrained(str(MODEL))
    pipe.set_progress_bar_config(disable=True)
    case = make_edit_case(2, 0, n_frames=4)
    with torch.no_grad():
        latents = pipe.encode_video(case.video_tensor(), torch.Generator().manual_seed(0))
        trajectory = pipe.invert(latents, "", STEPS)
        roundtrip = (pipe.decode_latents(latents).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return pipe, case, latents, trajectory, roundtrip


def _run(edit, rad: RADConfig, irjs: IRJSConfig, start_in_regions: str = "inversion", case=None):
    pipe, fixture_case, latents, trajectory, _ = edit
    case = case or fixture_case  # another case of the same source video (other region boxes)
    out = pipe(case.prompt, objects=case.objects(), source_latents=latents, inversion_trajectory=trajectory,
               num_inference_steps=STEPS, guidance_scale=10.0, generator=torch.Generator().manual_seed(0),
               start_in_regions=start_in_regions, rad=rad, irjs=irjs, attention_cell_px=8, output_type="np",
               return_attention=True)
    return (out.frames[0] * 255).round().astype(np.uint8), out


# the shapes demo's settings (configs/shapes.yaml), the RAD schedule shortened to the test's 20 steps
RAD = RADConfig(token_normalization="share", normalize_eot=True, step_size=50.0, top_k_ratio=1.0, max_update_steps=10,
                refinement_thresholds={0: 0.8, 5: 0.8}, max_refinement_iters=20)
IRJS = IRJSConfig(placement="after_step")


def test_shipped_model_loads_as_a_video_pipeline(edit):
    pipe, case, latents, trajectory, _ = edit
    assert type(pipe.unet).__name__ == "TuneAVideoUNet" and pipe.vae_scale_factor == 4
    assert latents.shape == (1, 4, 4, 16, 16) and len(trajectory) == STEPS + 1
    assert pipe.tokenizer.model_max_length == 17


def test_rad_puts_the_objects_and_their_attention_inside_the_regions(edit):
    _, case, *_ = edit
    frames_rad, with_rad = _run(edit, RAD, IRJS)
    frames_plain, without = _run(edit, dataclasses.replace(RAD, enabled=False), IRJS)
    inside_rad = region_attention_mass(with_rad.attention_maps, case)
    inside_plain = region_attention_mass(without.attention_maps, case)
    # measured: 0.28 with RAD against 0.15 without (the regions cover 17 % of the cells)
    assert inside_rad > inside_plain + 0.1, (inside_rad, inside_plain)
    # the detector's verdict on each frame: both objects, right colour and shape, inside their
    # boxes. Measured: 4 of 4 frames with RAD, 2 of 4 without.
    placed_rad, placed_plain = placement_scores(frames_rad, case)["placement"], placement_scores(frames_plain, case)["placement"]
    assert placed_rad >= 0.75 and placed_rad > placed_plain, (placed_rad, placed_plain)
    losses = [r["loss"] for r in with_rad.rad_losses]
    assert len(losses) == RAD.max_update_steps and all(np.isfinite(losses))


def test_irjs_keeps_the_invariant_region(edit):
    _, case, _, _, roundtrip = edit
    outside = case.outside_mask()
    kept, _ = _run(edit, RADConfig(enabled=False), IRJS)
    free, _ = _run(edit, RADConfig(enabled=False), IRJSConfig(enabled=False))
    with_irjs, without = psnr(kept, roundtrip, outside), psnr(free, roundtrip, outside)
    # Against the source's own VAE round trip, which bounds what any latent edit can reach (the
    # source itself is 41 dB away from it here). Measured: 31.7 dB with IRJS, 16.2 dB without; what
    # is left are the pixels next to the boxes, which the VAE decoder mixes with the edited inside,
    # and the parts of the cells the tight boxes cut, which IRJS leaves to the model.
    assert with_irjs >= 27.0 and with_irjs > without + 10.0, (with_irjs, without)


def test_decoding_with_the_source_statistics_keeps_more_of_the_invariant_region(edit):
    # the benchmark's regions (boxes on the 4 px latent grid, so IRJS keeps every invariant pixel's
    # cell) and fresh noise in the regions (start_in_regions="noise"), so that their content changes
    case = make_edit_case(2, 0, n_frames=4, box_grid=4)
    outside = case.outside_mask()
    plain, _ = _run(edit, RADConfig(enabled=False), IRJS, start_in_regions="noise", case=case)
    fixed, _ = _run(edit, RADConfig(enabled=False), dataclasses.replace(IRJS, decode_statistics="source"),
                    start_in_regions="noise", case=case)
    plain_psnr, fixed_psnr = psnr(plain, case.source.frames, outside), psnr(fixed, case.source.frames, outside)
    # Against the source itself. Measured: 36.9 dB with the source's statistics, 35.4 dB plain. Not a
    # rule for every edit: with the demo's tracked_noise start this case comes out 1 dB the other
    # way; on bench_shapes.py's 24 editing cases the source's statistics win 22 of 24, by 3.9 dB
    # on average.
    assert fixed_psnr > plain_psnr + 1.0, (fixed_psnr, plain_psnr)
    # inside the regions both decodes show the same edit (the same latents; measured: 3.1 grey levels apart)
    assert np.abs(fixed[~outside].astype(float) - plain[~outside]).mean() < 8
