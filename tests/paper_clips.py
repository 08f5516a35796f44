"""Where the tests find the paper's clips (not shipped; data/README.md says where to get them).

Search order: the folder in $REATCO_PAPER_CLIPS, then data/paper-clips/ in this checkout (where
the configs read them from), then ../shared/data/paper-clips/ beside the checkout (one copy shared
by several checkouts). The tests that need the clips are skipped when none of these holds them.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def paper_clips_dir() -> Path:
    candidates = [Path(os.environ["REATCO_PAPER_CLIPS"])] if os.environ.get("REATCO_PAPER_CLIPS") else []
    candidates += [ROOT / "data" / "paper-clips", ROOT.parent / "shared" / "data" / "paper-clips"]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("*.mp4")):
            return folder
    return candidates[0]


CLIPS = paper_clips_dir()
