"""Evaluation metrics of the paper (Tables 1-3) and the LOVEU-TGVE-2023 dataset layout.

Every metric is a function over frames ((F, H, W, 3) uint8, PIL images, paths or a folder) plus a
prompt or regions; models load lazily by hub id or local folder, once per process.
"""

from .clip_metrics import (
    DEFAULT_CLIP,
    ClipScorer,
    frame_consistency,
    load_clip,
    mean_pairwise_cosine,
    text_alignment,
)
from .fidelity import invariant_mask, load_lpips, lpips_distance, masked_psnr
from .frames import LOVEU_SIZE, list_frame_files, to_pil_frames, to_uint8_frames
from .loveu import CATEGORIES, SUBSETS, LoveuVideo, read_loveu_csv
from .pickscore import DEFAULT_PICKSCORE_MODEL, DEFAULT_PICKSCORE_PROCESSOR, load_pickscore, pickscore
from .visor import (
    DEFAULT_OWLVIT,
    Detection,
    load_owlvit,
    parse_relation,
    relation_from_centres,
    relation_from_masks,
    visor,
    visor_scores,
)
from ._cache import clear_cache

__all__ = [
    "CATEGORIES", "DEFAULT_CLIP", "DEFAULT_OWLVIT", "DEFAULT_PICKSCORE_MODEL", "DEFAULT_PICKSCORE_PROCESSOR",
    "LOVEU_SIZE", "SUBSETS", "ClipScorer", "Detection", "LoveuVideo", "clear_cache", "frame_consistency",
    "invariant_mask", "list_frame_files", "load_clip", "load_lpips", "load_owlvit", "load_pickscore",
    "lpips_distance", "masked_psnr", "mean_pairwise_cosine", "parse_relation", "pickscore", "read_loveu_csv",
    "relation_from_centres", "relation_from_masks", "text_alignment", "to_pil_frames", "to_uint8_frames",
    "visor", "visor_scores",
]
