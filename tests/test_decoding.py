"""Decoding an edit with the source's GroupNorm statistics (reatco/decoding.py) on a tiny VAE."""

import pytest
import torch
from diffusers import AutoencoderKL

from reatco.decoding import decode_with_reference_statistics


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
