"""Video in and out: read a clip (file or folder of frames) at the working size; write mp4/gif/frames.

Two value ranges, each where diffusers has it: what goes *into* the pipeline is the VAE's
[-1, 1] (`read_video` returns (F, 3, H, W) floats in [-1, 1]; the pipeline checks its input with
`check_video_tensor`), what comes *out* is [0, 1] (the pipeline's "pt" and "np" frames). The
writers take the pipeline's output as it comes: float frames in [0, 1], uint8 frames, or PIL
images; a float video in [-1, 1] is refused with the fix, never written washed out. Every bad
input is a ConfigError (reading) or a ValueError (writing) naming its field.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

if TYPE_CHECKING:
    import torch

import numpy as np
from PIL import Image

from .errors import ConfigError
from .files import atomic_file

# torch is imported where a tensor is made, so that `import reatco` stays light.

FRAME_EXTS = (".jpg", ".jpeg", ".png")


# ----------------------------------------------------------------------------- checks


def check_size(height, width, multiple: int = 8, field: str = "video") -> None:
    """Raise a ConfigError naming the nearest valid sizes unless both are positive multiples."""
    for name, value in (("height", height), ("width", width)):
        where = f"{field}.{name}"
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(where, f"must be an integer number of pixels, got {value!r}")
        if value < multiple:
            raise ConfigError(where, f"{value} is too small: use a positive multiple of {multiple} (e.g. {multiple * 64})")
        if value % multiple:
            low = value // multiple * multiple
            raise ConfigError(where, f"{value} is not a multiple of {multiple}; nearest valid sizes: {low} or {low + multiple}")


def _natural_key(name: str):
    """frame2 before frame10: compare digit runs as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def frame_files(folder, field: str = "video.path") -> List[Path]:
    """The jpg/png files of a folder of frames, sorted naturally."""
    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTS and p.is_file()),
                   key=lambda p: _natural_key(p.name))
    if not files:
        raise ConfigError(field, f"folder {folder} has no {'/'.join(e[1:] for e in FRAME_EXTS)} frames")
    return files


# ----------------------------------------------------------------------------- decoding


def _decord():
    """The decord module, or None where it is not installed (we then decode with imageio/PyAV)."""
    try:
        import decord
    except ImportError:
        return None
    return decord


def _decord_count(path: Path) -> int:
    decord = _decord()
    if decord is None:
        raise ImportError("decord is not installed")
    return len(decord.VideoReader(str(path), num_threads=1))


def _decord_frames(path: Path, indices: Sequence[int]) -> np.ndarray:
    decord = _decord()
    if decord is None:
        raise ImportError("decord is not installed")
    reader = decord.VideoReader(str(path), num_threads=1)
    return reader.get_batch(list(indices)).asnumpy()


def _pyav_count(path: Path) -> int:
    import imageio.v3 as iio

    return int(iio.improps(path, plugin="pyav").shape[0])


def _pyav_frames(path: Path, indices: Sequence[int]) -> np.ndarray:
    """Decode sequentially (robust for any container) and keep the wanted frames."""
    import imageio.v3 as iio

    wanted, last, kept = set(indices), max(indices), {}
    for i, frame in enumerate(iio.imiter(path, plugin="pyav")):
        if i in wanted:
            kept[i] = frame
        if i >= last:
            break
    return np.stack([kept[i] for i in indices])


def _check_path(path, field: str) -> Path:
    path = Path(os.path.expanduser(str(path)))
    if not path.exists():
        raise ConfigError(field, f"{path} does not exist; give a video file (mp4, avi, mov, ...) or a folder of jpg/png frames")
    return path


def _with_fallback(path: Path, field: str, decord_fn, pyav_fn, *args):
    """decord first; imageio/PyAV where decord is missing or fails on this file."""
    errors = []
    for fn in (decord_fn, pyav_fn):
        try:
            return fn(path, *args)
        except Exception as err:  # decord and PyAV raise their own error types
            errors.append(f"{fn.__name__.strip('_').split('_')[0]}: {err}")
    raise ConfigError(field, f"cannot read {path} as a video ({'; '.join(errors)})")


def count_frames(path, field: str = "video.path") -> int:
    """Number of frames of a video file or a folder of frames."""
    path = _check_path(path, field)
    if path.is_dir():
        return len(frame_files(path, field))
    return _with_fallback(path, field, _decord_count, _pyav_count)


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    if frame.shape[:2] == (height, width):
        return frame
    # Pillow's bicubic filter widens with the scale factor, so it also antialiases when shrinking.
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BICUBIC))


def image_to_uint8(image: "Image.Image") -> np.ndarray:
    """(H, W, 3) uint8 of any PIL image: 16-bit and 32-bit greyscale scaled down to 8 bits
    (Pillow's own convert("RGB") clips them to 255: a white clip), palettes and alpha dropped."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and values.max(initial=0) > 255):
            values = values / 257.0  # 0…65535 → 0…255
        elif mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"))


def load_image(path, field: str, what: str = "frame") -> np.ndarray:
    """An untrusted image file → (H, W, 3) uint8; a ConfigError naming the file otherwise
    (not an image, truncated, or a decompression bomb)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image_to_uint8(image)
    except Exception as err:  # Pillow raises several types (UnidentifiedImageError, DecompressionBombError, …)
        raise ConfigError(field, f"cannot read {what} {path} as an image: {err}") from err


def _load_image(path: Path, field: str) -> np.ndarray:
    return load_image(path, field)


def read_video(path, height: int, width: int, n_frames: Optional[int] = None, start_frame: int = 0,
               frame_stride: int = 1, field: str = "video") -> "torch.Tensor":
    """Frames start_frame, start_frame + frame_stride, … (n_frames of them, or all that exist),
    resized to height×width without cropping: (F, 3, H, W) float32 in [-1, 1].

    `path` is a video file (decord, or imageio/PyAV where decord fails) or a folder of jpg/png
    frames in natural order. `field` names the config section in errors."""
    check_size(height, width, 8, field)
    if n_frames is not None and (isinstance(n_frames, bool) or n_frames < 1):
        raise ConfigError(f"{field}.n_frames", f"must be ≥ 1 (or null for every frame), got {n_frames}")
    if start_frame < 0:
        raise ConfigError(f"{field}.start_frame", f"must be ≥ 0, got {start_frame}")
    if frame_stride < 1:
        raise ConfigError(f"{field}.frame_stride", f"must be ≥ 1, got {frame_stride}")
    path_field = f"{field}.path"
    path = _check_path(path, path_field)
    files = frame_files(path, path_field) if path.is_dir() else None
    total = len(files) if files is not None else count_frames(path, path_field)
    if start_frame >= total:
        raise ConfigError(f"{field}.start_frame", f"{start_frame} is past the end: {path} has {total} frames (0 … {total - 1})")
    available = (total - 1 - start_frame) // frame_stride + 1
    if n_frames is not None and n_frames > available:
        raise ConfigError(
            f"{field}.n_frames",
            f"asked for {n_frames} frames but {path} has {total} frames: with start_frame={start_frame} and "
            f"frame_stride={frame_stride} at most {available} can be taken; lower n_frames or frame_stride",
        )
    indices = list(range(start_frame, total, frame_stride))[: n_frames or available]
    if files is not None:
        frames = [_load_image(files[i], path_field) for i in indices]
        sizes = {f.shape[:2] for f in frames}
        if len(sizes) > 1:  # resizing each to the working size would stretch some differently
            first = frames[0].shape[:2]
            odd = next(i for i, f in zip(indices, frames) if f.shape[:2] != first)
            raise ConfigError(path_field, f"the frames of {path} differ in size: {files[indices[0]].name} is "
                              f"{first[1]}×{first[0]} but {files[odd].name} is {frames[indices.index(odd)].shape[1]}×"
                              f"{frames[indices.index(odd)].shape[0]}; give frames of one size")
    else:
        frames = list(_with_fallback(path, path_field, _decord_frames, _pyav_frames, indices))
    array = np.stack([_resize(np.ascontiguousarray(f[..., :3]), height, width) for f in frames])
    import torch

    video = torch.from_numpy(array).permute(0, 3, 1, 2).float()
    return video / 127.5 - 1.0


# ----------------------------------------------------------------------------- value ranges

# Decoded frames overshoot a little before clamping; anything beyond this is another range.
_RANGE_SLACK = 1e-3


def check_video_tensor(video, field: str = "video") -> None:
    """A pipeline input: finite floats in [-1, 1] (the VAE's range, what read_video returns).
    Raises ValueError naming `field` and the fix for 0–255 values or anything outside [-1, 1];
    warns when every value is in [0, 1], the range of diffusers' image tensors and of the
    pipeline's own output, which the VAE would read as a washed-out video."""
    import torch

    if not video.is_floating_point():
        raise ValueError(f"{field}: a {video.dtype} tensor; give floats in [-1, 1] (uint8 x: x.float() / 127.5 - 1)")
    values = video.detach()
    if not torch.isfinite(values).all():
        raise ValueError(f"{field}: has NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if high > 1 + _RANGE_SLACK and low >= 0:
        raise ValueError(f"{field}: values reach {high:.1f}, like 0–255 pixels; the pipeline takes [-1, 1]: pass x / 127.5 - 1")
    if low < -1 - _RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise ValueError(f"{field}: values span [{low:.3f}, {high:.3f}]; the pipeline takes [-1, 1] (read_video's range)")
    if low >= 0 and high <= 1 and high > low:
        import warnings

        warnings.warn(f"{field}: every value is in [0, 1] (range [{low:.3f}, {high:.3f}]): the pipeline takes [-1, 1], "
                      "read_video's range; if this is a [0, 1] video (diffusers' image tensors, the pipeline's own "
                      "output), pass x * 2 - 1", stacklevel=3)


def _short_array(value) -> str:
    """A tensor or array described by its type, shape and dtype, never its values."""
    shape = tuple(getattr(value, "shape", ()))
    return f"a {type(value).__name__} of shape {shape} and dtype {getattr(value, 'dtype', '?')}"


def frame_to_uint8(frame, field: str = "video") -> np.ndarray:
    """One frame from Python → (H, W, 3) uint8: a PIL image (16-bit too), or an array (H, W, 3)
    or (3, H, W), uint8 / uint16 / floats in [0, 1] (diffusers' image arrays)."""
    if isinstance(frame, Image.Image):
        return image_to_uint8(frame)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().float().numpy() if frame.is_floating_point() else frame.detach().cpu().numpy()
    array = np.asarray(frame)
    if array.ndim == 2:
        array = array[..., None].repeat(3, axis=-1)
    if array.ndim != 3:
        raise ConfigError(field, f"a frame is (H, W, 3) or (3, H, W), got {_short_array(array)}")
    if array.shape[-1] not in (3, 4) and array.shape[0] in (3, 4):
        array = array.transpose(1, 2, 0)  # channels first
    if array.shape[-1] not in (3, 4):
        raise ConfigError(field, f"a frame has 3 colour channels, got {_short_array(array)}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return (array.astype(np.float64) / 257.0).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ConfigError(field, "frames hold NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
            raise ConfigError(field, f"float frames are taken in [0, 1] (diffusers' image arrays), got values in "
                                     f"[{low:.3g}, {high:.3g}]; pass uint8 frames, x / 255, or a [-1, 1] torch tensor")
        return (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    raise ConfigError(field, f"frames are uint8, uint16 or floats in [0, 1], got {_short_array(array)}")


def video_input(video, height: Optional[int] = None, width: Optional[int] = None, n_frames: Optional[int] = None,
                field: str = "video") -> "torch.Tensor":
    """What the pipeline's `video=` takes → (F, 3, H, W) float32 in [-1, 1]:
    * a path (a folder of frames, an mp4 / gif / …): read with read_video at height × width (None:
      the clip's own size), its first n_frames (None: all);
    * a torch tensor (F, 3, H, W), floats in [-1, 1] (read_video's range), as it is;
    * a numpy array (F, H, W, 3) or (F, 3, H, W): uint8, uint16, or floats in [0, 1];
    * a list of frames: PIL images or such arrays."""
    import torch

    if isinstance(video, (str, os.PathLike)):
        if height is None or width is None:
            native_w, native_h = native_frame_size(video, field)
            height, width = height or native_h, width or native_w
            if height % 8 or width % 8:
                raise ConfigError(field, f"{os.fspath(video)} has {native_w}×{native_h} frames; pass height= and width= "
                                         "(multiples of the model's attention cell) to read it at a working size")
        return read_video(video, height, width, n_frames=n_frames, field=field)
    if isinstance(video, torch.Tensor):
        return video
    if isinstance(video, np.ndarray):
        if video.ndim != 4:
            raise ConfigError(field, f"a video array is (F, H, W, 3) or (F, 3, H, W), got {_short_array(video)}")
        frames = [frame_to_uint8(f, field) for f in video]
    elif isinstance(video, (list, tuple)):
        if not video:
            raise ConfigError(field, "is an empty list of frames")
        frames = [frame_to_uint8(f, f"{field}[{i}]") for i, f in enumerate(video)]
    else:
        raise ConfigError(field, f"takes a path, a (F, 3, H, W) tensor in [-1, 1], an array or a list of frames; "
                                 f"got {type(video).__name__}")
    sizes = {f.shape[:2] for f in frames}
    if len(sizes) > 1:
        raise ConfigError(field, f"the frames differ in size ({sorted(sizes)}); give frames of one size")
    stacked = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    return stacked / 127.5 - 1


def _float_frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] (the pipeline's output) → uint8; any other range is refused."""
    if not np.isfinite(frames).all():
        raise ValueError("frames have NaN or infinite values; nothing was written")
    low, high = float(frames.min()), float(frames.max())
    if low < -_RANGE_SLACK:
        raise ValueError(f"float frames must be in [0, 1] (the pipeline's output), these reach {low:.3f}: for a [-1, 1] "
                         "video (read_video's range, the VAE's) pass (x + 1) / 2")
    if high > 1 + _RANGE_SLACK:
        raise ValueError(f"float frames must be in [0, 1] (the pipeline's output), these reach {high:.1f}: for 0–255 "
                         "floats pass x / 255")
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def native_frame_size(path, field: str = "video.path") -> tuple[int, int]:
    """(width, height) of a video's own frames (its first frame), before any resizing."""
    path = _check_path(path, field)
    if path.is_dir():
        frame = _load_image(frame_files(path, field)[0], field)
    else:
        frame = _with_fallback(path, field, _decord_frames, _pyav_frames, [0])[0]
    return int(frame.shape[1]), int(frame.shape[0])


# ----------------------------------------------------------------------------- encoding


def to_uint8(frames) -> np.ndarray:
    """(F, H, W, 3) uint8 from what the pipeline returns: float frames in [0, 1] (a tensor or an
    array, channels first or last), uint8 frames, or a list of PIL images; the pipeline's whole
    `out.frames` (a batch of one clip) is taken as its clip."""
    if isinstance(frames, (list, tuple)) and len(frames) == 1 and isinstance(frames[0], (list, tuple)):
        frames = frames[0]  # "pil": [[images]]
    if getattr(frames, "ndim", 0) == 5:
        if frames.shape[0] != 1:
            raise ValueError(f"frames hold a batch of {frames.shape[0]} videos; write one: frames[i]")
        frames = frames[0]
    if isinstance(frames, (list, tuple)) and frames and isinstance(frames[0], Image.Image):
        return np.stack([np.asarray(f.convert("RGB")) for f in frames])
    torch = sys.modules.get("torch")  # a tensor implies torch is already imported
    if torch is not None and isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        frames = (frames.float() if frames.is_floating_point() else frames).numpy()
    frames = np.asarray(frames)
    if np.issubdtype(frames.dtype, np.floating):
        frames = _float_frames_to_uint8(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"to_uint8 takes float frames in [0, 1], uint8 frames or PIL images; got a {frames.dtype} array")
    if frames.ndim != 4:
        raise ValueError(f"expected frames shaped (F, H, W, 3) or (F, 3, H, W), got {frames.shape}")
    if frames.shape[-1] != 3 and frames.shape[1] == 3:
        frames = frames.transpose(0, 2, 3, 1)
    if frames.shape[-1] != 3:
        raise ValueError(f"expected 3 colour channels, got frames shaped {frames.shape}")
    return np.ascontiguousarray(frames)


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: repeat the last row/column where one is odd."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _write_mp4(frames: np.ndarray, path: str, fps: float) -> None:
    import imageio_ffmpeg

    frames = _even(frames)
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        path, (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=None,
        macro_block_size=1, output_params=["-crf", "17"], ffmpeg_log_level="error",
    )
    writer.send(None)  # start ffmpeg
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


def _write_gif(frames: np.ndarray, path: str, fps: float) -> None:
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(1, round(1000 / fps)), loop=0)


def write_video(frames, path, fps: float = 8) -> Path:
    """Write frames as .mp4 (h264, yuv420p) or .gif, chosen by the suffix; atomic. `frames` as the
    pipeline returns them (float [0, 1] "pt"/"np" frames, PIL images) or uint8 (see to_uint8)."""
    path = Path(path)
    array = to_uint8(frames)
    if len(array) == 0:
        raise ValueError("write_video: no frames to write")
    if fps <= 0:
        raise ValueError(f"write_video: fps must be > 0, got {fps}")
    writers = {".mp4": _write_mp4, ".gif": _write_gif}
    suffix = path.suffix.lower()
    if suffix not in writers:
        raise ValueError(f"write_video writes .mp4 or .gif, not {path.name!r}; use write_frames for a folder of images")
    with atomic_file(path, suffix=path.suffix) as tmp:  # the writers pick the format by the suffix
        writers[suffix](array, tmp, fps)
    return path


def write_frames(frames, folder, ext: str = "png") -> List[Path]:
    """Write frames as <folder>/00000.<ext>, 00001.<ext>, … (png or jpg); each file atomic."""
    ext = ext.lower().lstrip(".")
    if f".{ext}" not in FRAME_EXTS:
        raise ValueError(f"write_frames writes png or jpg frames, not {ext!r}")
    folder = Path(folder)
    paths = []
    for i, frame in enumerate(to_uint8(frames)):
        path = folder / f"{i:05d}.{ext}"
        options = {"quality": 95} if ext in ("jpg", "jpeg") else {}
        with atomic_file(path, suffix=path.suffix) as tmp:
            Image.fromarray(frame).save(tmp, format="JPEG" if ext != "png" else "PNG", **options)
        paths.append(path)
    return paths


__all__ = ["read_video", "count_frames", "write_video", "write_frames", "to_uint8", "check_size", "frame_files",
           "check_video_tensor"]
