"""Objects given from Python as dicts become the typed settings once, where they enter (the
pipelines' calls, the region finders): a dict and the equivalent dataclass edit alike, and a bad
dict field is refused naming it. Also the backbone seam the region finder reads through."""

import contextlib

import pytest
import torch

from reatco.errors import ConfigError
from reatco.pipeline import ReAtCoPipeline
from reatco.regions.settings import ObjectConfig, RegionObject, SourceRegionConfig, object_settings, source_settings

from tiny_models import tiny_sd_components

PROMPT = "a cat and a dog on the grass"
N_FRAMES, SIZE = 3, 32
DICTS = [{"word": "cat", "box": [0, 0, 16, 16]}, {"word": "dog", "occurrence": 1, "boxes": {0: [16, 16, 32, 32], 2: [16, 8, 32, 24]}}]
TYPED = [ObjectConfig(word="cat", box=[0, 0, 16, 16]), ObjectConfig(word="dog", occurrence=1, boxes={0: [16, 16, 32, 32], 2: [16, 8, 32, 24]})]


@pytest.fixture(scope="module")
def pipe():
    pipe = ReAtCoPipeline(**tiny_sd_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_a_dict_object_becomes_the_dataclass_it_spells():
    assert [object_settings(d, f"objects[{j}]") for j, d in enumerate(DICTS)] == TYPED
    found = object_settings({"word": "cat", "source": {"word": "dog", "instance": 2}})
    assert found == ObjectConfig(word="cat", source=SourceRegionConfig(word="dog", instance=2))
    assert found.source.threshold == 0.5 and found.source.timesteps == [50, 150]  # left out: the schema's defaults
    ready = object_settings({"word": "cat", "region": "a Region"})
    assert isinstance(ready, RegionObject) and ready.region == "a Region" and ready.box is None
    assert object_settings(TYPED[0]) is TYPED[0]  # typed passes as it is
    spec = SourceRegionConfig(word="dog")
    assert source_settings(spec) is spec and source_settings({"word": "dog"}) == spec


@pytest.mark.parametrize("obj, field, message", [
    ({"word": "cat", "boxs": [0, 0, 16, 16]}, "objects[1].boxs", "did you mean 'objects[1].boxes'"),
    ({"word": "cat", "source": {"word": "dog", "treshold": 0.3}}, "objects[1].source.treshold",
     "did you mean 'objects[1].source.threshold'"),
    ({"word": "cat", "source": "dog"}, "objects[1].source", "is a mapping"),
    ("cat", "objects[1]", "an object is a mapping"),
])
def test_a_bad_dict_field_is_named(obj, field, message):
    with pytest.raises(ConfigError) as err:
        object_settings(obj, "objects[1]")
    assert err.value.field == field and message in str(err.value)


def test_the_pipeline_edits_dict_and_dataclass_objects_alike(pipe):
    def run(objects):
        return pipe(PROMPT, video=torch.rand(N_FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1,
                    objects=objects, num_inference_steps=3, guidance_scale=3.0, generator=torch.Generator().manual_seed(7),
                    attention_cell_px=pipe.vae_scale_factor * 2, output_type="latent",
                    rad={"max_update_steps": 2, "refinement_thresholds": {}}).frames

    assert torch.equal(run(DICTS), run(TYPED))
    for bad, field in (({"word": "dog", "boxs": [16, 16, 32, 32]}, "objects[1].boxs"),
                       ({"word": "dog", "box": [16, 16, 32, 32], "mask": "m.png"}, "objects[1]"),
                       ({"word": "", "box": [16, 16, 32, 32]}, "objects[1].word")):
        with pytest.raises(ConfigError) as err:
            run([DICTS[0], bad])
        assert err.value.field == field


def test_the_wan_plan_takes_dict_and_dataclass_objects_alike(tmp_path):
    from reatco.backbones.wan import plan_from_folder
    from tiny_wan import save_tiny_wan

    folder = save_tiny_wan(tmp_path / "tiny-wan")
    prompt, size = "a red circle and a blue square on the sea", dict(n_frames=5, height=32, width=48)
    given = [{"word": "circle", "box": [0, 0, 32, 32]}, {"word": "blue square", "boxes": [[16, 0, 48, 32]] * 5}]
    typed = [ObjectConfig(word="circle", box=[0, 0, 32, 32]), ObjectConfig(word="blue square", boxes=[[16, 0, 48, 32]] * 5)]
    from_dicts, from_typed = plan_from_folder(folder, prompt, given, **size), plan_from_folder(folder, prompt, typed, **size)
    assert [(o.word, o.token_indices) for o in from_dicts.objects] == [(o.word, o.token_indices) for o in from_typed.objects]
    assert all(torch.equal(a.region.boxes, b.region.boxes) for a, b in zip(from_dicts.objects, from_typed.objects))
    with pytest.raises(ConfigError) as err:
        plan_from_folder(folder, prompt, [given[0], {"word": "square", "bx": [0, 0, 32, 32]}], **size)
    assert err.value.field == "objects[1].bx"


@contextlib.contextmanager
def _outputs_of(module: torch.nn.Module):
    """The outputs of `module`'s calls inside the context, as a reference."""
    outputs: list = []
    hook = module.register_forward_hook(lambda m, args, output: outputs.append(output))
    try:
        yield outputs
    finally:
        hook.remove()


def test_the_unet_seam_gives_the_finder_its_levels_and_features(pipe):
    backbone = pipe.backbone
    # the tiny UNet's cross-attention cells (tests/tiny_models.py): 2, 4 and 8 px
    assert backbone.attention_cell_sizes() == [2, 4, 8]
    latents = torch.randn(1, 4, N_FRAMES, 8, 8, generator=torch.Generator().manual_seed(0))
    embeds = backbone.encode_prompt(PROMPT)
    with _outputs_of(pipe.unet.up_blocks[-1]) as last, backbone.recording_features() as features, torch.no_grad():
        backbone.predict(latents, torch.tensor(10), embeds)
    assert len(features) == 1 and torch.equal(features[0], last[0].float())
    assert features[0].shape[0] == N_FRAMES  # one row per frame
    with torch.no_grad():
        backbone.predict(latents, torch.tensor(10), embeds)
    assert len(features) == 1  # the hook is gone after the context


def test_the_wan_seam_gives_its_token_grid_and_last_block_features(tmp_path):
    from reatco.backbones.wan import WanReAtCoPipeline
    from tiny_wan import save_tiny_wan

    wan = WanReAtCoPipeline.from_pretrained(save_tiny_wan(tmp_path / "tiny-wan"))
    backbone = wan.backbone
    assert backbone.attention_cell_sizes() == [16]
    latents = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    embeds = backbone.encode_prompt("a red circle")
    with _outputs_of(wan.transformer.blocks[-1]) as tokens, backbone.recording_features() as features, torch.no_grad():
        backbone.predict(latents, torch.tensor(500.0), embeds)
    (grid,), (flat,) = features, tokens
    assert grid.shape == (2, flat.shape[-1], 2, 3)  # latent frames, channels, the 2 × 3 token grid
    for f, i, j in ((0, 0, 0), (0, 1, 2), (1, 0, 1), (1, 1, 0)):  # token (f, i, j) is row f·6 + i·3 + j
        assert torch.equal(grid[f, :, i, j], flat[0, f * 6 + i * 3 + j].float())
