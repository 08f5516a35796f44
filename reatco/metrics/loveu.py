"""The LOVEU-TGVE-2023 dataset: its CSV, its frame folders and the submission layout.

`LOVEU-TGVE-2023_Dataset.csv` has a header row (`Video name`, `Our GT caption`, the four
`* Change(s) Caption` columns) and is split into subsets by marker rows whose first cell is
`DAVIS Videos:`, `Youtube Videos:` or `Videvo Videos:`. Source frames live at
`<root>/<subset>/480p_frames/<video>/*.jpg`; edited frames at
`<pred_root>/<subset>/<video>/<category>/00000.jpg ...`, category = first word of the caption
column, lower-cased (style, object, background, multiple), as in the official scripts/run_eval.py.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

CSV_NAME = "LOVEU-TGVE-2023_Dataset.csv"
VIDEO_COLUMN = "Video name"
SOURCE_COLUMN = "Our GT caption"
CATEGORY_COLUMNS = {
    "style": "Style Change Caption",
    "object": "Object Change Caption",
    "background": "Background Change Caption",
    "multiple": "Multiple Changes Caption",
}
CATEGORIES = tuple(CATEGORY_COLUMNS)
SECTION_MARKERS = {"davis videos": "DAVIS_480p", "youtube videos": "youtube_480p", "videvo videos": "videvo_480p"}
SUBSETS = tuple(SECTION_MARKERS.values())
FULL_COUNTS = {"DAVIS_480p": 16, "youtube_480p": 23, "videvo_480p": 37}  # 76 videos in the full set


@dataclass(frozen=True)
class LoveuVideo:
    subset: str
    name: str
    source_prompt: str
    prompts: dict = field(hash=False)  # category -> edited prompt
    row: int  # 1-based CSV line, for messages


def check_path_component(name: str, field: str, what: str = "name") -> str:
    """A user string that becomes one folder or file name: no separators, no '..', nothing hidden
    or absolute, so that it cannot point outside the folder it is joined to."""
    bad = (name in ("", ".", "..") or name != name.strip() or name.startswith(".")
           or any(c in name for c in ("/", "\\", "\0")) or any(ord(c) < 32 for c in name))
    if bad or os.path.isabs(name):
        raise ConfigError(field, f"{what} {name!r} cannot be used as a folder name (no '/', '\\', '..', leading '.' "
                                 "or control characters)")
    return name


def _section(cell: str) -> str | None:
    key = cell.strip().rstrip(":").strip().lower()
    return SECTION_MARKERS.get(key)


def read_loveu_csv(path: str | os.PathLike) -> list[LoveuVideo]:
    """Every video row of the CSV, in file order; ConfigError naming the file and line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("data_root", f"{path} not found; --data_root must hold {CSV_NAME}")
    from ..regions.files import read_text_file

    text = read_text_file(path, str(path), "LOVEU-TGVE CSV")  # UTF-8 (with or without a BOM), size-capped
    try:
        rows = list(csv.reader(text.splitlines()))
    except csv.Error as err:
        raise ConfigError(str(path), f"not a readable CSV: {err}") from err
    header, columns = None, {}
    subset, videos, seen = None, [], set()
    for line, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if header is None:
            if VIDEO_COLUMN in cells:
                header = cells
                columns = {name: i for i, name in enumerate(cells) if name}
                missing = [c for c in (VIDEO_COLUMN, SOURCE_COLUMN, *CATEGORY_COLUMNS.values()) if c not in columns]
                if missing:
                    raise ConfigError(f"{path}:{line}", f"header row lacks the column(s) {missing}")
                continue
            if _section(cells[0]) is None:
                raise ConfigError(f"{path}:{line}", f"expected the header row with {VIDEO_COLUMN!r} first, got {row}")
        if _section(cells[0]) is not None:
            subset = _section(cells[0])
            continue
        if header is None:
            raise ConfigError(f"{path}:{line}", f"no header row with {VIDEO_COLUMN!r} before this row")
        if subset is None:
            raise ConfigError(f"{path}:{line}", "video row before any section marker (DAVIS Videos:, Youtube Videos:, Videvo Videos:)")

        def cell(name: str) -> str:
            i = columns[name]
            return cells[i] if i < len(cells) else ""

        name = cell(VIDEO_COLUMN)
        if not name:
            raise ConfigError(f"{path}:{line}", f"empty {VIDEO_COLUMN!r}")
        check_path_component(name, f"{path}:{line}", f"{VIDEO_COLUMN!r}")
        prompts = {cat: cell(col) for cat, col in CATEGORY_COLUMNS.items()}
        empty = [CATEGORY_COLUMNS[c] for c, p in prompts.items() if not p]
        if empty:
            raise ConfigError(f"{path}:{line}", f"video {name!r} has an empty {empty}")
        if (subset, name) in seen:
            raise ConfigError(f"{path}:{line}", f"video {name!r} appears twice in {subset}")
        seen.add((subset, name))
        videos.append(LoveuVideo(subset, name, cell(SOURCE_COLUMN), prompts, line))
    if header is None:
        raise ConfigError(str(path), f"no header row with {VIDEO_COLUMN!r}")
    if not videos:
        raise ConfigError(str(path), "no video rows under the section markers")
    return videos


def coverage_report(videos: list[LoveuVideo]) -> list[str]:
    """One line per subset whose video count differs from the full dataset (a partial copy)."""
    counts = {s: 0 for s in SUBSETS}
    for v in videos:
        counts[v.subset] += 1
    return [f"{s}: {counts[s]} of {n} videos" for s, n in FULL_COUNTS.items() if counts[s] != n]


def source_frames_dir(data_root: str | os.PathLike, video: LoveuVideo) -> Path:
    return Path(data_root) / video.subset / "480p_frames" / video.name


def prediction_dir(pred_root: str | os.PathLike, subset: str, video: str, category: str) -> Path:
    return Path(pred_root) / subset / video / category


def has_frames(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in (".jpg", ".jpeg", ".png") for p in folder.iterdir())
