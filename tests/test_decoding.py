"""Decoding an edit with the source's GroupNorm statistics (reatco/irjs/decoding.py) on a tiny VAE."""

import pytest
import torch
from diffusers import AutoencoderKL

from reatco.irjs.decoding import (decode_chunks_with_reference_statistics, decode_with_reference_statistics, group_statistics,
                             normalize_into)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    # one block: no up-sampling, so a latent cell is a pixel and the receptive field is easy to count
    # (conv_in, 2 mid resnets, 2 up resnets, conv_out: 10 3×3 convolutions → 10 px each way)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), layers_per_block=1,
                         norm_num_groups=4, mid_block_add_attention=False, sample_size=32).eval()


def _decode(vae):
    return lambda z: vae.decode(z).sample


def test_reference_equal_to_the_latents_is_the_plain_decode(vae):
    z = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = vae.decode(z).sample
        same = decode_with_reference_statistics(_decode(vae), vae.decoder, z, z)
    torch.testing.assert_close(same, plain, rtol=1e-4, atol=1e-5)
    assert not any(m._forward_hooks for m in vae.decoder.modules())  # hooks removed


def test_an_edit_leaves_pixels_beyond_the_receptive_field_exactly_as_the_source(vae):
    source = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    edit = source.clone()
    edit[:, :, :4, :4] = 3 * torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))  # the "region"
    with torch.no_grad():
        ref = vae.decode(source).sample
        plain = vae.decode(edit).sample
        fixed = decode_with_reference_statistics(_decode(vae), vae.decoder, source, edit)
    far = (slice(None), slice(None), slice(16, None), slice(16, None))  # > 10 px from the region
    assert (plain[far] - ref[far]).abs().max() > 1e-3  # plain: the frame-wide statistics moved
    torch.testing.assert_close(fixed[far], ref[far], rtol=1e-4, atol=1e-5)
    assert (fixed[:, :, :4, :4] - ref[:, :, :4, :4]).abs().max() > 1e-2  # the region itself is the edit's


def test_mismatched_shapes_and_slicing_are_errors(vae):
    z = torch.randn(2, 4, 32, 32)
    with pytest.raises(ValueError, match="one shape"):
        decode_with_reference_statistics(_decode(vae), vae.decoder, z, z[:1])
    calls = iter([z, z[:1]])  # a decode that slices the edit differently from the reference
    with pytest.raises(RuntimeError, match="slices"), torch.no_grad():
        decode_with_reference_statistics(lambda _: vae.decode(next(calls)).sample, vae.decoder, z, z)
    assert not any(m._forward_hooks for m in vae.decoder.modules())


def _previous_decode_with_reference_statistics(decode, decoder, reference, latents):
    """The implementation before streaming (two whole decodes, float32 hook temporaries): the
    reference the streaming decode must equal."""
    norms = [m for m in decoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    recorded, state = [], {"mode": "record", "next": 0}

    def hook(module, args, output):
        x = args[0]
        groups = x.float().reshape(x.shape[0], module.num_groups, -1)
        if state["mode"] == "record":
            recorded.append((groups.mean(-1, keepdim=True), groups.var(-1, unbiased=False, keepdim=True)))
            return output
        mean, var = recorded[state["next"]]
        state["next"] += 1
        y = ((groups - mean) / torch.sqrt(var + module.eps)).reshape(x.shape)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = y * module.weight.float().reshape(shape) + module.bias.float().reshape(shape)
        return y.to(output.dtype)

    handles = [m.register_forward_hook(hook) for m in norms]
    try:
        with torch.no_grad():
            decode(reference)
            state["mode"] = "apply"
            return decode(latents)
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="module")
def vae_with_attention():
    torch.manual_seed(1)  # two levels and the mid-block attention (a GroupNorm on (N, C, h·w))
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=32).eval()


def test_frame_by_frame_streaming_equals_the_previous_whole_clip_decode(vae_with_attention):
    vae = vae_with_attention
    g = torch.Generator().manual_seed(4)
    source = torch.randn(3, 4, 16, 16, generator=g)
    edit = source.clone()
    edit[:, :, 2:8, 3:9] = 2 * torch.randn(3, 4, 6, 6, generator=g)
    with torch.no_grad():
        before = _previous_decode_with_reference_statistics(_decode(vae), vae.decoder, source, edit)
        calls = []

        def decode(z):
            calls.append(z)
            return vae.decode(z).sample

        chunks = decode_chunks_with_reference_statistics(decode, vae.decoder, source.split(1), edit.split(1))
    torch.testing.assert_close(torch.cat(chunks), before, rtol=1e-4, atol=1e-5)
    # streamed: source frame k, then edit frame k — never a second whole decode held
    assert [c.shape[0] for c in calls] == [1] * 6
    for k in range(3):
        assert torch.equal(calls[2 * k], source[k:k + 1]) and torch.equal(calls[2 * k + 1], edit[k:k + 1])
    assert not any(m._forward_hooks for m in vae.decoder.modules())


def test_half_precision_statistics_are_gathered_in_float32_slices():
    x = (torch.randn(2, 8, 6, 5, generator=torch.Generator().manual_seed(5)) * 3 + 7).bfloat16()
    exact = x.float().reshape(2, 4, -1)
    for chunk in (1, 30, 1 << 22):  # 30 float32 elements: one group at a time
        mean, var = group_statistics(x, 4, chunk_elements=chunk)
        assert mean.dtype == torch.float32 and mean.shape == (2, 4, 1)
        torch.testing.assert_close(mean, exact.mean(-1, keepdim=True))
        torch.testing.assert_close(var, exact.var(-1, unbiased=False, keepdim=True))


def test_normalize_into_matches_group_norm_with_its_own_statistics():
    norm = torch.nn.GroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2, 8))
        norm.bias.copy_(torch.linspace(-1, 1, 8))
    x = torch.randn(2, 8, 5, 3, generator=torch.Generator().manual_seed(6)) + 2
    mean, var = group_statistics(x, 4)
    out = torch.empty_like(x)
    with torch.no_grad():
        assert normalize_into(out, x, norm, mean, var) is out
        torch.testing.assert_close(out, norm(x), rtol=1e-5, atol=1e-5)
