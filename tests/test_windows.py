"""Temporal windows: every frame covered, averaging of overlaps, whole clip when the window is large."""

import pytest
import torch

from reatco.config import section_settings
from reatco.errors import ConfigError
from reatco.windows import merge_windows, temporal_windows, window_weights


def test_official_setting_and_tail_window():
    assert temporal_windows(16, 4, 1) == [list(range(s, s + 4)) for s in range(13)]  # 13 windows
    assert temporal_windows(10, 4, 3) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    # Stride 4 stops at frame 8: a tail window [6…9] covers the last frames.
    assert temporal_windows(10, 4, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]


@pytest.mark.parametrize("size", [None, 8, 20])
def test_window_at_least_the_clip_is_one_pass(size):
    assert temporal_windows(8, size, 1) == [list(range(8))]
    pred = torch.randn(1, 4, 8, 2, 2)
    assert torch.equal(merge_windows([pred], temporal_windows(8, size, 1), 8), pred)


def test_every_frame_is_covered():
    for n in range(1, 21):
        for size in range(1, 21):
            for stride in range(1, size + 1):
                windows = temporal_windows(n, size, stride)
                assert sorted({f for w in windows for f in w}) == list(range(n)), (n, size, stride)
                assert all(len(w) == min(size, n) for w in windows)
                assert all(w == list(range(w[0], w[0] + len(w))) for w in windows)
                assert windows[-1][-1] == n - 1


def test_bad_sizes():
    # the math refuses with a plain ValueError naming its argument; the settings layer names the field
    for size, stride, argument in ((0, 1, "size"), (4, 0, "stride"), (3, 4, "skip")):
        with pytest.raises(ValueError, match=argument) as e:
            temporal_windows(8, size, stride)
        assert not isinstance(e.value, ConfigError)
    with pytest.raises(ConfigError) as e:
        section_settings("window", {"size": 0})
    assert e.value.field == "window.size"
    with pytest.raises(ConfigError) as e:
        section_settings("window", {"size": 4, "stride": 0})
    assert e.value.field == "window.stride"
    with pytest.raises(ConfigError) as e:
        section_settings("window", {"size": 3, "stride": 4})
    assert e.value.field == "window.stride" and "skip" in e.value.message


def test_merge_is_the_count_weighted_average_by_hand():
    windows = temporal_windows(5, 3, 2)  # [0,1,2], [2,3,4]
    a = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 3, 1, 1)
    b = torch.tensor([10.0, 20.0, 30.0]).reshape(1, 1, 3, 1, 1)
    merged = merge_windows([a, b], windows, 5).flatten().tolist()
    assert merged == [1.0, 2.0, (3.0 + 10.0) / 2, 20.0, 30.0]
    assert window_weights(windows, 5).tolist() == [1, 1, 2, 1, 1]


def test_merge_of_identical_predictions_is_the_prediction():
    full = torch.randn(2, 4, 7, 3, 3)
    windows = temporal_windows(7, 3, 1)
    merged = merge_windows([full[:, :, w] for w in windows], windows, 7)
    assert torch.allclose(merged, full, atol=1e-6)


def test_merge_errors():
    with pytest.raises(ValueError):
        merge_windows([torch.zeros(1, 1, 2, 1, 1)], [[0, 1], [1, 2]], 3)
    with pytest.raises(ValueError):
        merge_windows([torch.zeros(1, 1, 2, 1, 1)], [[0, 1]], 3)  # frame 2 in no window
    with pytest.raises(ValueError):
        merge_windows([torch.zeros(1, 1, 3, 1, 1)], [[0, 1]], 2)
