"""RAD losses, smoothing, schedules: against hand computations and explicit references."""

import json
import math

import numpy as np
import pytest
import torch

from reatco.rad import losses as rad
from reatco.config import section_settings
from reatco.errors import ConfigError


# ----------------------------------------------------------------------------- text attention


def _plain_value_error(call, argument: str) -> None:
    """The pure math refuses a bad argument with a plain ValueError naming the argument, not a
    ConfigError: it knows no YAML field (the settings layer does)."""
    with pytest.raises(ValueError, match=argument) as err:
        call()
    assert not isinstance(err.value, ConfigError)


def test_text_attention_drops_sot_and_renormalises_over_the_prompt_tokens():
    maps = torch.tensor([[0.7, 0.1, 0.12, 0.05, 0.03]])  # SOT, 2 prompt tokens, EOT, padding
    out = rad.text_attention(maps, n_text_tokens=2, temperature=100.0)
    e = np.exp(100 * np.array([0.1, 0.12]))
    assert out.shape == (1, 2)
    np.testing.assert_allclose(out[0].numpy(), e / e.sum(), rtol=1e-5)
    # None = the official span: everything but SOT and the last token.
    official = rad.text_attention(maps, None, temperature=100.0)
    e = np.exp(100 * np.array([0.1, 0.12, 0.05]))
    np.testing.assert_allclose(official[0].numpy(), e / e.sum(), rtol=1e-5)
    with pytest.raises(ValueError):
        rad.text_attention(maps, 5)



def test_share_normalization_is_each_tokens_part_of_the_text_attention():
    # A model whose EOT/padding sink holds 99 % of the attention: the softmax of what is left is
    # nearly uniform, the share keeps the 2:1 preference of the first prompt token.
    maps = torch.tensor([[0.0, 0.004, 0.002, 0.994]])
    share = rad.text_attention(maps, n_text_tokens=2, normalization="share")
    np.testing.assert_allclose(share[0].numpy(), [2 / 3, 1 / 3], rtol=1e-6)
    soft = rad.text_attention(maps, n_text_tokens=2, temperature=100.0)
    assert float(soft[0, 0] - soft[0, 1]) < 0.5 * float(share[0, 0] - share[0, 1])
    # cells with no text attention at all stay finite (zeros), not NaN
    assert torch.equal(rad.text_attention(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), 2, normalization="share"), torch.zeros(1, 2))
    # the math says what is wrong with its argument; the settings layer names the YAML field
    _plain_value_error(lambda: rad.text_attention(maps, 2, normalization="sum"), "normalization")
    with pytest.raises(ConfigError, match=r"^rad\.token_normalization: 'sum' is not one of softmax, share"):
        section_settings("rad", {"token_normalization": "sum"})

def test_word_attention_uses_tokenizer_indices_and_combines_sub_tokens():
    text = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # (…, n = 4): tokens 1…4
    assert torch.equal(rad.word_attention(text, [1]), text[..., 0])
    assert torch.equal(rad.word_attention(text, [3], reduction="mean"), text[..., 2])
    assert torch.equal(rad.word_attention(text, [2, 3, 4], reduction="mean"), (text[..., 1] + text[..., 2] + text[..., 3]) / 3)
    assert torch.equal(rad.word_attention(text, [2, 3, 4], reduction="sum"), text[..., 1] + text[..., 2] + text[..., 3])
    for bad in ([0], [5], []):
        with pytest.raises(ValueError):
            rad.word_attention(text, bad)
    _plain_value_error(lambda: rad.word_attention(text, [1, 2], reduction="max"), "reduction")
    with pytest.raises(ConfigError, match=r"^rad\.word_tokens: 'max' is not one of mean, sum"):
        section_settings("rad", {"word_tokens": "max"})


def test_a_two_token_word_can_reach_the_refinement_thresholds_only_as_a_sum():
    # a cell whose text attention goes entirely to the word's two tokens, split evenly
    text = rad.text_attention(torch.tensor([[0.0, 0.3, 0.3, 0.0, 0.4]]), n_text_tokens=3, normalization="share")
    mean, total = rad.word_attention(text, [1, 2], reduction="mean"), rad.word_attention(text, [1, 2])
    assert float(mean) == pytest.approx(0.5) and float(total) == pytest.approx(1.0)
    assert rad.needs_refinement(1 - mean, 0.8) and not rad.needs_refinement(1 - total, 0.8)


# ----------------------------------------------------------------------------- smoothing


def test_kernel_is_attend_and_excite_s():
    g = rad.gaussian_kernel_1d(3, 0.5)
    e = math.exp(-1.0)  # exp(-((±1)/(2·0.5))²)
    np.testing.assert_allclose(g.numpy(), np.array([e, 1.0, e]) / (1 + 2 * e), rtol=1e-12)
    assert abs(float(rad.gaussian_kernel_3d(5, 0.8).sum()) - 1) < 1e-12
    _plain_value_error(lambda: rad.gaussian_kernel_1d(4, 0.5), "kernel")
    _plain_value_error(lambda: rad.gaussian_kernel_1d(3, 0.0), "sigma")
    for key, value in (("smoothing_kernel", 4), ("smoothing_sigma", 0.0)):
        with pytest.raises(ConfigError) as err:
            section_settings("rad", {key: value})
        assert err.value.field == f"rad.{key}"


def _reference_smooth(x: np.ndarray, kernel: int, sigma: float, frame_mode: str = "reflect") -> np.ndarray:
    """Explicit 3-D convolution over a numpy-padded volume."""
    p = kernel // 2
    k = rad.gaussian_kernel_3d(kernel, sigma).numpy()
    padded = np.pad(x, ((p, p), (0, 0), (0, 0)), mode=frame_mode)
    padded = np.pad(padded, ((0, 0), (p, p), (p, p)), mode="reflect")
    out = np.zeros_like(x)
    n_f, h, w = x.shape
    for f in range(n_f):
        for i in range(h):
            for j in range(w):
                out[f, i, j] = (padded[f : f + kernel, i : i + kernel, j : j + kernel] * k).sum()
    return out


@pytest.mark.parametrize("shape, kernel, sigma", [((3, 4, 5), 3, 0.5), ((4, 6, 6), 5, 1.0), ((2, 3, 4), 3, 0.5), ((2, 5, 6), 5, 1.0)])
def test_smoothing_equals_explicit_3d_convolution(shape, kernel, sigma):
    x = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = rad.gaussian_smooth_3d(x, kernel, sigma).numpy()
    # A dimension as short as the padding cannot be reflected: it repeats its edge instead.
    frame_mode = "reflect" if shape[0] > kernel // 2 else "edge"
    np.testing.assert_allclose(ours, _reference_smooth(x.numpy(), kernel, sigma, frame_mode), rtol=1e-10)


def test_smoothing_single_frame_is_2d_smoothing_and_batches_are_independent():
    x = torch.rand(1, 5, 6, dtype=torch.float64)
    ours = rad.gaussian_smooth_3d(x)
    g = rad.gaussian_kernel_1d(3, 0.5).numpy()
    k2 = np.outer(g, g)
    padded = np.pad(x[0].numpy(), 1, mode="reflect")
    ref = np.array([[(padded[i : i + 3, j : j + 3] * k2).sum() for j in range(6)] for i in range(5)])
    np.testing.assert_allclose(ours[0].numpy(), ref, rtol=1e-10)
    batch = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    both = rad.gaussian_smooth_3d(batch)
    assert torch.allclose(both[1], rad.gaussian_smooth_3d(batch[1]))
    assert torch.allclose(rad.gaussian_smooth_3d(torch.full((3, 4, 4), 0.25)), torch.full((3, 4, 4), 0.25))


# ----------------------------------------------------------------------------- losses


def _hand_maps():
    """One word, two frames of 4×4; region = the top-left 2×2 block."""
    a = torch.zeros(1, 2, 4, 4)
    a[0, 0, :2, :2] = torch.tensor([[0.9, 0.7], [0.5, 0.1]])
    a[0, 0, 3, :] = torch.tensor([0.6, 0.3, 0.2, 0.1])
    a[0, 1, :2, :2] = torch.tensor([[0.4, 0.4], [0.2, 0.0]])
    a[0, 1, 2:, 1:] = 0.5  # six outside cells at 0.5
    a[0, 1, 2, 0] = 0.1
    m = torch.zeros(1, 2, 4, 4)
    m[:, :, :2, :2] = 1
    return a, m


def test_region_losses_by_hand():
    a, m = _hand_maps()
    # ratio 0.5: K_in = 2 of 4 cells, K_out = 6 of 12.
    inner, outer = rad.region_losses(a, m, top_k_ratio=0.5)
    fg = [(0.9 + 0.7) / 2, (0.4 + 0.4) / 2]
    bg = [(0.6 + 0.3 + 0.2 + 0.1 + 0 + 0) / 6, 0.5]
    assert torch.allclose(inner, torch.tensor([1 - sum(fg) / 2]))
    assert torch.allclose(outer, torch.tensor([sum(bg) / 2]))
    assert torch.allclose(rad.rad_loss(inner, outer), torch.tensor(1 - sum(fg) / 2 + sum(bg) / 2))
    # Default ratio 0.2: K_in = max(1, round(0.8)) = 1, K_out = round(2.4) = 2.
    inner, outer = rad.region_losses(a, m)
    assert torch.allclose(inner, torch.tensor([1 - (0.9 + 0.4) / 2]))
    assert torch.allclose(outer, torch.tensor([((0.6 + 0.3) / 2 + 0.5) / 2]))


def test_region_losses_per_word():
    a, m = _hand_maps()
    maps = torch.cat([a, a.flip(-1)])
    masks = torch.cat([m, m.flip(-1)])
    inner, outer = rad.region_losses(maps, masks, 0.5)
    assert inner.shape == outer.shape == (2,)
    assert torch.allclose(inner[0], inner[1]) and torch.allclose(outer[0], outer[1])
    swapped_inner, _ = rad.region_losses(maps, masks.flip(0), 0.5)
    assert (swapped_inner > inner).all()  # each word scored against its own region


def test_top_k_count_truncates_like_the_official_code_and_never_reaches_zero():
    area = torch.arange(0.0, 400.0)
    official = (area * 0.2).long()  # pipeline_split_gen.py: (mask.sum() * P).long()
    k = rad.top_k_count(area, 0.2)
    assert torch.equal(k[official > 0], official[official > 0])
    assert (k[official == 0] == 1).all()  # the official count is 0 there (a NaN mean)
    # The paper's dolphins goldfish box at 448×768 (7×4 cells) and its outside (336 − 28 cells).
    assert rad.top_k_count(torch.tensor([28.0, 308.0]), 0.2).tolist() == [5, 61]


def test_top_k_count_round_option_rounds_half_up():
    area = torch.tensor([0.0, 1, 2, 3, 4, 7, 8, 12, 13, 20])
    assert rad.top_k_count(area, 0.2, "round").tolist() == [1, 1, 1, 1, 1, 1, 2, 2, 3, 4]
    assert rad.top_k_count(torch.tensor([3.0, 5.0, 1.0]), 0.5, "round").tolist() == [2, 3, 1]  # 1.5→2, 2.5→3
    assert rad.top_k_count(torch.tensor([28.0, 308.0]), 0.2, "round").tolist() == [6, 62]
    _plain_value_error(lambda: rad.top_k_count(area, 0.2, "ceil"), "rounding")
    with pytest.raises(ConfigError, match=r"^rad\.top_k_rounding: 'ceil' is not one of truncate, round"):
        section_settings("rad", {"top_k_rounding": "ceil"})


def test_empty_outside_contributes_zero_and_empty_inside_is_skipped():
    a, m = _hand_maps()
    m_full = m.clone()
    m_full[0, 1] = 1  # frame 1's region is the whole frame: no outside
    _, outer = rad.region_losses(a, m_full, 0.5)
    assert torch.allclose(outer, torch.tensor([(0.6 + 0.3 + 0.2 + 0.1) / 6 / 2]))
    m_gone = m.clone()
    m_gone[0, 1] = 0  # the object is out of view in frame 1
    inner, outer = rad.region_losses(a, m_gone, 0.5)
    assert torch.allclose(inner, torch.tensor([1 - 0.8]))  # frame 0 only
    assert torch.isfinite(outer).all()
    inner, _ = rad.region_losses(a, torch.zeros_like(m), 0.5)
    assert inner.tolist() == [0.0]


def test_gradient_step_lowers_the_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 8, generator=g).requires_grad_(True)  # (F·…): 2 words' clip
    masks = torch.zeros(2, 3, 4, 4)
    masks[0, :, :2, :2] = 1
    masks[1, :, 2:, 1:] = 1

    def loss_of(x):
        probs = torch.softmax(x[0], dim=-1)  # (F, h, w, L) cross-attention probabilities
        text = rad.text_attention(probs, n_text_tokens=5, temperature=100.0)
        maps = torch.stack([rad.word_attention(text, [2]), rad.word_attention(text, [4, 5])])
        maps = rad.gaussian_smooth_3d(maps)
        return rad.rad_loss(*rad.region_losses(maps, masks))

    before = loss_of(logits)
    (grad,) = torch.autograd.grad(before, logits)
    assert grad.abs().sum() > 0
    after = loss_of(logits.detach() - 0.05 * grad)
    assert after < before


def test_region_losses_validate_shapes_and_ratio():
    a, m = _hand_maps()
    with pytest.raises(ValueError):
        rad.region_losses(a, m[:, :1])
    _plain_value_error(lambda: rad.region_losses(a, m, top_k_ratio=0.0), "top_k_ratio")
    with pytest.raises(ConfigError) as err:
        section_settings("rad", {"top_k_ratio": 0.0})
    assert err.value.field == "rad.top_k_ratio"


# ----------------------------------------------------------------------------- schedule


def test_step_sizes_match_the_official_schedule():
    alpha = rad.step_sizes(50)
    expected = 20 * np.sqrt(np.linspace(1.0, 0.5, 50))
    np.testing.assert_allclose(alpha.numpy(), expected, rtol=1e-12)
    assert alpha[0] == 20.0 and abs(float(alpha[-1]) - 20 * math.sqrt(0.5)) < 1e-12
    assert rad.step_sizes(1, 10.0, (0.25, 0.5)).tolist() == [5.0]
    _plain_value_error(lambda: rad.step_sizes(10, 20.0, (1.0, -0.5)), "step_range")
    with pytest.raises(ConfigError) as err:
        section_settings("rad", {"step_size_range": [1.0, -0.5]})
    assert err.value.field == "rad.step_size_range"


def test_refinement_schedule_and_stop_rule():
    thresholds = {0: 0.05, 10: 0.5, "20": 0.8}
    assert [rad.refinement_target(i, thresholds) for i in (0, 5, 10, 20, 21)] == [0.05, None, 0.5, 0.8, None]
    assert rad.refinement_target(0, None) is None
    # Repeat until max_j (1 − fg_j) ≤ 1 − threshold.
    assert rad.needs_refinement(torch.tensor([0.3, 0.6]), 0.5)
    assert not rad.needs_refinement(torch.tensor([0.3, 0.5]), 0.5)
    assert rad.needs_refinement(torch.tensor([0.96]), 0.05)
    assert not rad.needs_refinement(torch.tensor([0.95]), 0.05)
    assert not rad.needs_refinement(torch.tensor([-0.1]), 1.2)  # target clamps at 0
    assert not rad.needs_refinement(torch.tensor([]), 0.5)


def test_loss_log_is_json_able():
    log = rad.RADLossLog(["cat", "rabbit", "cat"])
    log.add(0, 981, torch.tensor([0.5, 0.25, 0.1]), torch.tensor([0.1, 0.2, 0.3]), refinement_iters=3)
    log.add(1, 961, torch.tensor([0.4, 0.2, 0.1]), torch.tensor([0.1, 0.1, 0.1]))
    data = json.loads(json.dumps(log.to_dict()))
    assert data["words"] == ["cat", "rabbit", "cat#2"]
    assert data["steps"][0]["inner"] == {"cat": 0.5, "rabbit": 0.25, "cat#2": pytest.approx(0.1)}
    assert data["steps"][0]["loss"] == pytest.approx(0.85 + 0.6)
    assert data["steps"][0]["refinement_iters"] == 3
    assert log.series("inner", "cat") == [0.5, pytest.approx(0.4)]
    with pytest.raises(ValueError):
        log.add(2, 941, torch.tensor([0.1]), torch.tensor([0.1]))


def test_frame_scale_calibrates_the_step_to_the_official_window():
    assert rad.frame_scale(4, 4) == 1.0  # the official 4-frame windows run the official α
    assert rad.frame_scale(16, 4) == 4.0 and rad.frame_scale(8, 4) == 2.0
    assert rad.frame_scale(16, None) == 1.0  # no calibration: the per-pass mean


def test_calibrated_step_equals_summing_the_terms_over_frames():
    """α · F / 4 on the per-frame means = α on the terms summed over frames and divided by 4."""
    torch.manual_seed(0)
    x = torch.rand(2, 8, 4, 4, requires_grad=True)
    masks = torch.zeros(2, 8, 4, 4)
    masks[0, :, :2, :2] = 1
    masks[1, :, 2:, 1:] = 1
    maps = torch.softmax(x.flatten(2), -1).view_as(x)
    inner, outer = rad.region_losses(maps, masks)
    g_mean = torch.autograd.grad(rad.rad_loss(inner, outer), x, retain_graph=True)[0] * rad.frame_scale(8, 4)
    fg = torch.stack([1 - rad.region_losses(maps[:, f:f + 1], masks[:, f:f + 1])[0] for f in range(8)], 1)  # (J, F)
    bg = torch.stack([rad.region_losses(maps[:, f:f + 1], masks[:, f:f + 1])[1] for f in range(8)], 1)
    summed = ((8 - fg.sum(1)) / 4).sum() + (bg.sum(1) / 4).sum()  # inner terms are > 0 here (fg < 1)
    g_sum = torch.autograd.grad(summed, x)[0]
    torch.testing.assert_close(g_mean, g_sum, rtol=1e-5, atol=1e-7)
