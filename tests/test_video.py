"""Video I/O: round trips keep count, size and order; slicing; every bad input's error; fallbacks."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from reatco import video as video_mod
from reatco.errors import ConfigError
from reatco.video import check_size, count_frames, read_video, to_uint8, write_frames, write_video

H, W, N = 64, 96, 12


def palette(n=N):
    """A clearly different solid colour per frame (far apart, so codecs cannot confuse them)."""
    return np.array([[(37 * i) % 256, 255 - 20 * i, (90 + 61 * i) % 256] for i in range(n)], dtype=np.uint8)


def solid_frames(n=N, h=H, w=W):
    return np.broadcast_to(palette(n)[:, None, None, :], (n, h, w, 3)).copy()


def frame_ids(video):
    """Index of the palette colour nearest to each read frame's mean colour."""
    means = to_uint8((video + 1) / 2).reshape(len(video), -1, 3).mean(1)
    dist = ((means[:, None, :] - palette().astype(float)[None]) ** 2).sum(-1)
    assert dist.min(1).max() < 12**2 * 3, "a frame's colour is far from every written colour"
    return dist.argmin(1).tolist()


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    write_video(solid_frames(), path, fps=8)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_write_read_round_trip_keeps_count_size_and_order(tmp_path, suffix):
    path = write_video(solid_frames(), tmp_path / f"v{suffix}", fps=10)
    assert count_frames(path) == N
    video = read_video(path, H, W)
    assert video.shape == (N, 3, H, W) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    assert frame_ids(video) == list(range(N))


def test_frames_folder_round_trip(tmp_path):
    paths = write_frames(torch.from_numpy(solid_frames()).permute(0, 3, 1, 2).float() / 255, tmp_path / "f")
    assert [p.name for p in paths[:2]] == ["00000.png", "00001.png"]
    video = read_video(tmp_path / "f", H, W)
    assert video.shape == (N, 3, H, W)
    assert frame_ids(video) == list(range(N))
    assert np.array_equal(to_uint8((video + 1) / 2), solid_frames())  # png is lossless


def test_folder_is_sorted_naturally(tmp_path):
    for i, colour in enumerate(palette()):
        Image.fromarray(np.full((H, W, 3), colour, np.uint8)).save(tmp_path / f"frame{i + 1}.jpg", quality=98)
    (tmp_path / "notes.txt").write_text("not a frame")
    assert count_frames(tmp_path) == N
    assert frame_ids(read_video(tmp_path, H, W)) == list(range(N))  # frame10 after frame9


def test_start_stride_and_count_pick_the_right_frames(mp4):
    assert frame_ids(read_video(mp4, H, W, n_frames=3, start_frame=2, frame_stride=3)) == [2, 5, 8]
    assert frame_ids(read_video(mp4, H, W, start_frame=1, frame_stride=4)) == [1, 5, 9]
    assert frame_ids(read_video(mp4, H, W, n_frames=4, start_frame=8)) == [8, 9, 10, 11]


def test_resizes_to_the_working_size_without_crop(tmp_path):
    frames = solid_frames(3)
    frames[:, :, : W // 2] = 0  # left half black, right half coloured
    path = write_video(frames, tmp_path / "v.mp4")
    out = to_uint8((read_video(path, 32, 128) + 1) / 2)
    assert out.shape == (3, 32, 128, 3)
    assert out[:, :, :56].max() < 20 and out[:, :, 72:].mean() > 40  # the halves stay halves


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        read_video(tmp_path / "nope.mp4", H, W)
    assert err.value.field == "video.path" and "does not exist" in err.value.message


def test_unreadable_file_is_an_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ConfigError) as err:
        read_video(bad, H, W)
    assert err.value.field == "video.path" and "cannot read" in err.value.message


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        read_video(tmp_path, H, W)
    assert err.value.field == "video.path" and "no" in err.value.message


def test_too_few_frames_says_how_many_there_are(mp4):
    with pytest.raises(ConfigError) as err:
        read_video(mp4, H, W, n_frames=8, start_frame=1, frame_stride=3)
    assert err.value.field == "video.n_frames"
    assert "has 12 frames" in err.value.message and "at most 4" in err.value.message


def test_start_past_the_end_is_an_error(mp4):
    with pytest.raises(ConfigError) as err:
        read_video(mp4, H, W, start_frame=12)
    assert err.value.field == "video.start_frame" and "12 frames" in err.value.message


@pytest.mark.parametrize("height,width,bad,hint", [(450, 96, "video.height", "448 or 456"), (64, 100, "video.width", "96 or 104")])
def test_size_not_multiple_of_8_names_nearest_sizes(mp4, height, width, bad, hint):
    with pytest.raises(ConfigError) as err:
        read_video(mp4, height, width)
    assert err.value.field == bad and hint in err.value.message


def test_check_size_other_multiples_and_tiny_sizes():
    check_size(448, 768, multiple=32)
    with pytest.raises(ConfigError, match="nearest valid sizes: 480 or 512"):
        check_size(500, 512, multiple=32, field="x")
    with pytest.raises(ConfigError) as err:
        check_size(64, 0)
    assert err.value.field == "video.width" and "too small" in err.value.message


def test_decord_missing_falls_back_to_pyav(mp4, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now raises ImportError
    used = []
    real = video_mod._pyav_frames
    monkeypatch.setattr(video_mod, "_pyav_frames", lambda *a: used.append(1) or real(*a))
    assert count_frames(mp4) == N
    assert frame_ids(read_video(mp4, H, W, n_frames=3, frame_stride=2)) == [0, 2, 4]
    assert used


def test_decord_failure_falls_back_to_pyav(mp4, monkeypatch):
    def broken(*args):
        raise RuntimeError("decord cannot open this")

    monkeypatch.setattr(video_mod, "_decord_frames", broken)
    assert frame_ids(read_video(mp4, H, W, n_frames=2)) == [0, 1]


@pytest.mark.skipif(video_mod._decord() is None, reason="decord is not installed")
def test_decord_is_tried_first(mp4, monkeypatch):
    monkeypatch.setattr(video_mod, "_pyav_frames", lambda *a: pytest.fail("decord should have read this"))
    assert frame_ids(read_video(mp4, H, W, n_frames=2, start_frame=3)) == [3, 4]


def test_odd_sizes_are_padded_for_mp4(tmp_path):
    path = write_video(solid_frames(2, 63, 95), tmp_path / "odd.mp4")
    import imageio.v3 as iio

    assert iio.improps(path, plugin="pyav").shape == (2, 64, 96, 3)


def test_write_is_atomic_and_creates_folders(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b" / "v.mp4"
    write_video(solid_frames(2), target)
    assert target.exists() and sorted(p.name for p in target.parent.iterdir()) == ["v.mp4"]
    before = target.read_bytes()

    def crash(frames, path, fps):
        open(path, "wb").write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(video_mod, "_write_mp4", crash)
    with pytest.raises(RuntimeError):
        write_video(solid_frames(3), target)
    assert target.read_bytes() == before  # the old file is intact, no temp file left
    assert sorted(p.name for p in target.parent.iterdir()) == ["v.mp4"]


def test_write_video_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="write_frames"):
        write_video(solid_frames(2), tmp_path / "v.avi")


def test_to_uint8_layouts():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)  # the pipeline's [0, 1]
    out = to_uint8(x)
    assert out.shape == (2, 2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [0, 128, 255]
    assert np.array_equal(to_uint8(x.permute(0, 2, 3, 1).numpy()), out)  # "np" frames, channels last
    chw = np.zeros((2, 3, 4, 5), np.uint8)
    assert to_uint8(chw).shape == (2, 4, 5, 3)
    assert to_uint8([Image.new("RGB", (5, 4))]).shape == (1, 4, 5, 3)
    with pytest.raises(TypeError, match="uint8"):
        to_uint8(np.zeros((1, 4, 4, 3), np.int32))


def test_writers_refuse_other_float_ranges_with_the_fix(tmp_path):
    video = torch.rand(2, 3, 8, 8) * 2 - 1  # read_video's [-1, 1]
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        write_video(video, tmp_path / "v.mp4")
    with pytest.raises(ValueError, match="x / 255"):
        write_video(torch.rand(2, 3, 8, 8) * 255, tmp_path / "v.mp4")
    with pytest.raises(ValueError, match="NaN"):
        write_frames(torch.full((1, 3, 8, 8), float("nan")), tmp_path / "f")
    assert not list(tmp_path.iterdir())  # nothing written


def test_video_input_range_is_checked():
    from reatco.video import check_video_tensor

    check_video_tensor(torch.rand(2, 3, 8, 8) * 2 - 1)  # [-1, 1]: fine
    with pytest.raises(ValueError, match="video: values reach .*x / 127.5 - 1"):
        check_video_tensor(torch.rand(2, 3, 8, 8) * 255)
    with pytest.raises(ValueError, match="source: values span"):
        check_video_tensor(torch.rand(2, 3, 8, 8) * 4 - 2, field="source")
    with pytest.raises(ValueError, match="NaN"):
        check_video_tensor(torch.full((1, 3, 8, 8), float("inf")))
    with pytest.warns(UserWarning, match=r"x \* 2 - 1"):
        check_video_tensor(torch.rand(2, 3, 8, 8))  # [0, 1] is likely the wrong range
