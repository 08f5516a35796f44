"""TuneAVideoUNet against reference computations: checkpoint format, inflation, video layers."""

import json
import math

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from reatco.errors import ConfigError
from reatco.models import (
    CheckpointError,
    FrameContext,
    FrameGroupNorm,
    SparseCausalAttnProcessor,
    TemporalTransformerBlock,
    TuneAVideoUNet,
    rad_attention_layers,
)

from tiny_models import TINY_UNET_CONFIG, TINY_VAE_SCALE_FACTOR, tiny_unet2d

TEMPORAL_SUFFIXES = ("attn_temp.to_q.weight", "attn_temp.to_k.weight", "attn_temp.to_v.weight",
                     "attn_temp.to_out.0.weight", "attn_temp.to_out.0.bias", "norm_temp.weight", "norm_temp.bias")
TAV_BLOCKS = dict(down_block_types=["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
                  mid_block_type="UNetMidBlock3DCrossAttn",
                  up_block_types=["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"])


@pytest.fixture(scope="module")
def unet2d():
    return tiny_unet2d()


@pytest.fixture(scope="module")
def unet(unet2d):
    return TuneAVideoUNet.from_unet2d(unet2d)


def _block_prefixes(unet2d):
    return [k[: -len(".attn1.to_q.weight")] for k in unet2d.state_dict() if k.endswith(".attn1.to_q.weight")]


def _tav_state_dict(unet2d, seed=0):
    """The key set of a Tune-A-Video checkpoint: 2-D keys + 7 temporal keys per transformer block."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in unet2d.state_dict().items()}
    dim = {p: unet2d.get_submodule(p).dim for p in _block_prefixes(unet2d)}
    for prefix, d in dim.items():
        for suffix in TEMPORAL_SUFFIXES:
            shape = (d, d) if suffix.startswith("attn_temp") and suffix.endswith("weight") else (d,)
            state[f"{prefix}.{suffix}"] = torch.randn(shape, generator=g)
    return state


def _write_tav(folder, unet2d, state):
    config = {"_class_name": "UNet3DConditionModel", "_diffusers_version": "0.11.1",
              **{k: v for k, v in unet2d.config.items() if not k.startswith("_")}, **TAV_BLOCKS}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(state, folder / "diffusion_pytorch_model.bin")


def _inputs(b=1, f=4, seed=0, static=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 1 if static else f, 16, 16, generator=g)
    return x.expand(b, 4, f, 16, 16).contiguous(), torch.randn(b, 77, 32, generator=g)


# ----------------------------------------------------------------------------- checkpoint format

def test_state_dict_is_2d_keys_plus_temporal_keys(unet2d, unet):
    expected = set(unet2d.state_dict()) | {f"{p}.{s}" for p in _block_prefixes(unet2d) for s in TEMPORAL_SUFFIXES}
    assert set(unet.state_dict()) == expected
    assert len(_block_prefixes(unet2d)) == 7  # 1 + 1 down, 1 mid, 2 + 2 up transformer blocks


def test_strict_load_of_a_tune_a_video_checkpoint(unet2d, tmp_path):
    state = _tav_state_dict(unet2d)
    _write_tav(tmp_path / "tav", unet2d, state)
    model = TuneAVideoUNet.from_pretrained(tmp_path / "tav")
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert list(model.config.down_block_types) == list(unet2d.config.down_block_types)


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_mismatched_checkpoint_names_the_keys(unet2d, tmp_path, change):
    state = _tav_state_dict(unet2d)
    key = "up_blocks.1.attentions.0.transformer_blocks.0.attn_temp.to_k.weight"
    if change == "missing":
        del state[key]
    else:
        key = "down_blocks.0.temp_convs.0.weight"
        state[key] = torch.zeros(1)
    _write_tav(tmp_path / "tav", unet2d, state)
    with pytest.raises(CheckpointError, match=rf"{change} keys: .*{key}"):
        TuneAVideoUNet.from_pretrained(tmp_path / "tav")


@pytest.mark.parametrize("safe", [False, True])
def test_save_load_round_trip_is_bit_identical(unet2d, tmp_path, safe):
    model = TuneAVideoUNet.from_pretrained(_save_tav(tmp_path, unet2d))
    model.save_pretrained(tmp_path / "out", safe_serialization=safe)
    weights = "diffusion_pytorch_model." + ("safetensors" if safe else "bin")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "config.json", weights]  # README: how to load it
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["_class_name"] == "UNet3DConditionModel"
    assert [config["down_block_types"], config["mid_block_type"], config["up_block_types"]] == list(TAV_BLOCKS.values())
    if not safe:  # what the original code reads: a plain fp32 state dict
        raw = torch.load(tmp_path / "out" / weights, weights_only=True)
        assert all(v.dtype == torch.float32 for v in raw.values()) and set(raw) == set(model.state_dict())
    again = TuneAVideoUNet.from_pretrained(tmp_path / "out")
    a, b = model.state_dict(), again.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    x, e = _inputs(f=3)
    with torch.no_grad():
        assert torch.equal(model(x, 5, e).sample, again(x, 5, e).sample)


def _save_tav(tmp_path, unet2d):
    _write_tav(tmp_path / "tav", unet2d, _tav_state_dict(unet2d))
    return tmp_path / "tav"


def test_2d_folder_is_inflated_and_hub_kwargs_are_accepted(unet2d, tmp_path):
    unet2d.save_pretrained(tmp_path / "sd" / "unet")
    # what DiffusionPipeline.from_pretrained passes to a component's loader
    extra = dict(device_map=None, max_memory=None, offload_folder=None, offload_state_dict=False, variant=None,
                 use_safetensors=None, low_cpu_mem_usage=True, disable_mmap=False, provider=None)
    model = TuneAVideoUNet.from_pretrained(tmp_path / "sd", subfolder="unet", torch_dtype=torch.float16, **extra)
    assert model.dtype == torch.float16
    state2d = unet2d.state_dict()
    for k, v in model.state_dict().items():
        if k in state2d:
            assert torch.equal(v, state2d[k].half())
        elif "to_out" in k:
            assert not v.any(), k
    with pytest.raises(CheckpointError, match="subfolder='unet'"):
        TuneAVideoUNet.from_pretrained(tmp_path / "sd")


def test_inflation_is_the_same_every_time_and_leaves_the_global_generator_alone(unet2d):
    torch.manual_seed(1)
    first = TuneAVideoUNet.from_unet2d(unet2d).state_dict()
    state = torch.random.get_rng_state()
    second = TuneAVideoUNet.from_unet2d(unet2d).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(".attn_temp.to_q." in k and first[k].any() for k in first)  # a real (non-zero) init


def test_diffusers_pipeline_loader_and_saver_accept_it(tmp_path):
    from diffusers import DiffusionPipeline

    from tiny_models import save_tiny_sd

    folder = save_tiny_sd(tmp_path / "sd")
    TuneAVideoUNet.from_pretrained(folder, subfolder="unet").save_pretrained(folder / "unet")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "unet": ["reatco.models", "TuneAVideoUNet"]}))
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert isinstance(pipe.unet, TuneAVideoUNet)
    pipe.save_pretrained(tmp_path / "again")
    again = DiffusionPipeline.from_pretrained(tmp_path / "again")
    a, b = pipe.unet.state_dict(), again.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unreachable_hub_id_gives_a_clear_error():
    with pytest.raises(OSError, match="local folder"):
        TuneAVideoUNet.from_pretrained("no-such-owner/no-such-model", subfolder="unet", local_files_only=True)
    with pytest.raises(CheckpointError, match="not a folder"):
        TuneAVideoUNet.from_pretrained("./no/such/folder")


# ----------------------------------------------------------------------------- inflation

def test_inflated_unet_on_a_static_video_equals_the_image_unet(unet2d, unet):
    x, e = _inputs(b=2, f=4, static=True)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        video = unet(x, t, e).sample
        for i in range(2):
            image = unet2d(x[i : i + 1, :, 0], t[i], e[i : i + 1]).sample
            assert (video[i : i + 1] - image[:, :, None]).abs().max() <= 1e-5
    assert video.shape == x.shape


def test_frame_count_is_per_call(unet2d, unet):
    """The same model called with 1 and then 3 frames: F=1 is exactly the image model's input."""
    x, e = _inputs(f=3)
    with torch.no_grad():
        three = unet(x, 3, e).sample
        single = unet(x[:, :, :1], 3, e).sample
        image = unet2d(x[:, :, 0], 3, e).sample
    assert unet.frame_context.n_frames == 1
    assert (single[:, :, 0] - image).abs().max() <= 1e-5
    assert not torch.allclose(three[:, :, 0], image, atol=1e-4)  # other frames matter through the norms


def test_gradient_checkpointing_gives_the_same_gradients(unet2d):
    model = TuneAVideoUNet.from_unet2d(unet2d).train()
    torch.manual_seed(0)
    for block in model.temporal_blocks():  # non-zero temporal path, so that it is exercised
        torch.nn.init.normal_(block.attn_temp.to_out[0].weight, std=0.1)
    x, e = _inputs(f=3)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        if ckpt:
            model.enable_gradient_checkpointing()
        model(x, 3, e).sample.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert model.is_gradient_checkpointing
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


def test_default_processors_keep_attn1_sparse_causal(unet):
    unet.set_default_attn_processor()
    procs = unet.attn_processors
    assert sum(isinstance(p, SparseCausalAttnProcessor) for p in procs.values()) == 7
    assert all(isinstance(p, SparseCausalAttnProcessor) == n.endswith("attn1.processor") for n, p in procs.items())
    assert sum(n.endswith("attn_temp.processor") for n in procs) == 7
    heads = unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn_temp").heads
    assert heads == 8


# ----------------------------------------------------------------------------- video layers vs references

def test_sparse_causal_attention_equals_reference():
    torch.manual_seed(0)
    b, f, n, dim, heads = 2, 4, 6, 16, 2
    attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads)
    ctx = FrameContext(f)
    attn.set_processor(SparseCausalAttnProcessor(ctx))
    x = torch.randn(b * f, n, dim)
    with torch.no_grad():
        out = attn(x)
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        ref = torch.empty_like(out)
        for vid in range(b):
            for i in range(f):
                row = vid * f + i
                ctx_rows = [vid * f, vid * f + max(i - 1, 0)]
                kk = torch.cat([k[r] for r in ctx_rows])  # (2n, dim)
                vv = torch.cat([v[r] for r in ctx_rows])
                heads_out = []
                for h in range(heads):
                    s = slice(h * dim // heads, (h + 1) * dim // heads)
                    w = torch.softmax(q[row, :, s] @ kk[:, s].T / math.sqrt(dim // heads), dim=-1)
                    heads_out.append(w @ vv[:, s])
                ref[row] = attn.to_out[0](torch.cat(heads_out, dim=-1))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_frame_group_norm_equals_reference():
    torch.manual_seed(0)
    b, f, c, h, w, groups = 2, 3, 8, 5, 4, 4
    norm = FrameGroupNorm(groups, c, eps=1e-6, frame_context=FrameContext(f))
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(b * f, c, h, w) * 3 + 1
    video = x.reshape(b, f, groups, c // groups, h, w)
    mean = video.mean(dim=(1, 3, 4, 5), keepdim=True)
    var = video.var(dim=(1, 3, 4, 5), unbiased=False, keepdim=True)
    ref = ((video - mean) / torch.sqrt(var + 1e-6)).reshape(b * f, c, h, w)
    ref = ref * norm.weight[:, None, None] + norm.bias[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(norm(x), ref, rtol=1e-5, atol=1e-5)
    assert set(norm.state_dict()) == {"weight", "bias"}


def _block(f):
    torch.manual_seed(0)
    ctx = FrameContext(f)
    block = TemporalTransformerBlock(16, 2, 8, cross_attention_dim=12, frame_context=ctx)
    block.attn1.set_processor(SparseCausalAttnProcessor(ctx))
    return block


def test_temporal_attention_mixes_frames_and_sparse_causal_does_not_look_back():
    f = 4
    block = _block(f)
    x, ctx = torch.randn(f, 9, 16), torch.randn(f, 5, 12)
    y = x.clone()
    y[3] += torch.randn(9, 16)  # change the last frame (not a constant shift: norms remove those)
    with torch.no_grad():
        # fresh block: temporal attention contributes nothing; sparse-causal only looks back
        a, b = block(x, encoder_hidden_states=ctx), block(y, encoder_hidden_states=ctx)
        assert torch.equal(a[:3], b[:3]) and not torch.equal(a[3], b[3])
        torch.nn.init.normal_(block.attn_temp.to_out[0].weight, std=0.1)
        a, b = block(x, encoder_hidden_states=ctx), block(y, encoder_hidden_states=ctx)
        assert (a[0] - b[0]).abs().max() > 1e-4
    # temporal attention = full attention over frames at each position, no positional encoding:
    # permuting the frames of a frame-wise input permutes the temporal output
    perm = torch.tensor([2, 0, 3, 1])
    z = torch.randn(f, 9, 16)
    with torch.no_grad():
        t = block.attn_temp(block.norm_temp(z).transpose(0, 1)).transpose(0, 1)
        tp = block.attn_temp(block.norm_temp(z[perm]).transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(tp, t[perm], rtol=1e-5, atol=1e-6)


def test_temporal_attention_uses_the_block_heads_without_qkv_bias():
    block = _block(2)
    assert block.attn_temp.heads == 2 and block.attn_temp.to_q.out_features == 16
    assert block.attn_temp.to_q.bias is None and block.attn_temp.to_out[0].bias is not None
    assert not block.attn_temp.to_out[0].weight.any() and not block.attn_temp.to_out[0].bias.any()


# ----------------------------------------------------------------------------- RAD layers

SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu", center_input_sample=False,
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1, norm_eps=1e-5,
)


def test_rad_layers_of_stable_diffusion_v1():
    with torch.device("meta"):  # the real architecture, no memory or init time
        sd = TuneAVideoUNet.from_config(SD14_UNET)
    layers = rad_attention_layers(sd, vae_scale_factor=8, cell_px=32)
    prefix = ".transformer_blocks.0.attn2.processor"
    assert layers == [f"down_blocks.2.attentions.{i}{prefix}" for i in range(2)] + [f"up_blocks.1.attentions.{i}{prefix}" for i in range(3)]
    assert len(sd.temporal_blocks()) == 16
    with pytest.raises(ConfigError, match=r"model.attention_cell_px: .*\[8, 16, 32, 64\] px"):
        rad_attention_layers(sd, 8, 48)


def test_rad_layers_of_the_tiny_model(unet):
    prefix = ".transformer_blocks.0.attn2.processor"
    assert rad_attention_layers(unet, TINY_VAE_SCALE_FACTOR, 4) == [
        f"down_blocks.1.attentions.0{prefix}", f"up_blocks.1.attentions.0{prefix}", f"up_blocks.1.attentions.1{prefix}"]
    assert rad_attention_layers(unet, TINY_VAE_SCALE_FACTOR, 8) == [f"mid_block.attentions.0{prefix}"]
    assert set(rad_attention_layers(unet, TINY_VAE_SCALE_FACTOR, 4)) <= set(unet.attn_processors)
    assert TINY_UNET_CONFIG["block_out_channels"] == (32, 64, 64)
    assert isinstance(tiny_unet2d(), UNet2DConditionModel)
