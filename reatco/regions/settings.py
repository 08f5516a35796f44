"""The objects of an edit (`edits[k].objects`): their schema, region kinds and checks."""

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, List, Literal, Optional

from ..errors import ConfigError
from ..schema import at_least, choice, choices, require, unknown_key

@dataclass
class SourceRegionConfig:
    """Where an object is in the source video, found instead of typed (reatco/regions/finding.py,
    reatco/regions/detector.py): per-frame boxes (or masks) of one instance, tracked over frames."""

    # The word of the source prompt (video.prompt) naming the object the edited word replaces;
    # found from the model's own cross-attention on the source clip. Null when `detector` is set.
    word: Optional[str] = None
    # null: the word occurs once in the source prompt; k: its k-th occurrence (1-based).
    occurrence: Optional[int] = None
    # An open-vocabulary detector (hub id or folder of OWL-ViT / OWLv2, e.g.
    # google/owlvit-base-patch32) used instead of the attention, with the text `query`.
    detector: Optional[str] = None
    query: Optional[str] = None
    # Detector: keep detections scoring at least this (VISOR's OWL-ViT threshold: 0.1).
    score: float = 0.1
    # Which instance when several are found: largest | left | right | top | bottom (by mean
    # centre over the frames) | all (the box around every instance) | k ≥ 1 (the k-th counted
    # from the `order` side).
    instance: Any = "largest"
    # Where instance k counts from: left | right | top | bottom.
    order: str = "left"
    # Pixels added around the found object on every side.
    margin: float = 0.0
    # boxes (per-frame boxes) | mask (per-frame masks of the found blobs).
    region: str = "boxes"
    # Attention: the word's seed blobs are where its map is ≥ threshold × the frame's peak.
    threshold: float = 0.5
    # Attention: a seed grows over the pixels whose features (the UNet's finest features and,
    # weighted by colour_weight, the source colours) have cosine ≥ similarity with the seed's.
    similarity: float = 0.6
    colour_weight: float = 1.0
    # Attention: noise levels (scheduler timesteps) the source clip is read at, averaged.
    timesteps: List[int] = field(default_factory=lambda: [50, 150])
    # Attention: pixels per cell of the attention level read; null: one level finer than RAD's
    # when the model has one (SD: 16), else RAD's own.
    attention_cell_px: Optional[int] = None
    # Seeds the forward noise of the attention passes.
    seed: int = 0


@dataclass
class ObjectConfig:
    """A word of interest of the edit prompt and where its object must appear (one region kind)."""

    # A word of the edit prompt (multi-token words use all their tokens).
    word: str = ""
    # null: the word occurs once in the prompt; k: its k-th occurrence (1-based).
    occurrence: Optional[int] = None
    # [x1, y1, x2, y2] in pixels of the working resolution, the same every frame.
    box: Optional[List[float]] = None
    # One box per frame (a list) or keyframes {frame index: box}, interpolated in between.
    boxes: Optional[Any] = None
    # A PNG (every frame) or a folder of per-frame PNGs; white = object.
    mask: Optional[str] = None
    # A JSON or CSV of per-frame boxes (trackers' MOT CSV, {"boxes": {name: [...]}}, or an
    # edit's own regions.json); see reatco/regions/files.py.
    boxes_file: Optional[str] = None
    # Which object of boxes_file (its name or id); null when the file holds one object.
    track: Optional[Any] = None
    # Found in the source video instead: {word: <source prompt word>} or {detector: ..., query: ...}.
    source: Optional[SourceRegionConfig] = None


REGION_KEYS = ("box", "boxes", "mask", "boxes_file", "source")
InstanceChoice = Literal["largest", "left", "right", "top", "bottom", "all"]
Order = Literal["left", "right", "top", "bottom"]
SourceRegion = Literal["boxes", "mask"]


def validate_source(src: SourceRegionConfig, source_prompt: str, p: str) -> None:
    """Check an object's `source:` (ConfigError naming `p`.field); source_prompt: video.prompt."""
    if src.detector:
        require(bool(src.query and src.query.strip()), f"{p}.query", "is empty; a detector needs a text query, e.g. \"a dolphin\"")
        require(src.word is None, f"{p}.word", "give either word (the model's own attention) or detector + query, not both")
        require(0 <= src.score <= 1, f"{p}.score", f"must be in [0, 1] (default 0.1), got {src.score}")
    else:
        require(bool(src.word and src.word.strip()), f"{p}.word",
                 "is empty; name the word of the source prompt (video.prompt) for the object, or set detector + query")
        require(bool(source_prompt.strip()), "video.prompt", f"is empty, but {p}.word looks for a word in it")
        require(src.query is None, f"{p}.query", "is for detector: set detector too, or use word")
    if src.occurrence is not None:
        at_least(src.occurrence, 1, f"{p}.occurrence", " (1 = first occurrence; null if the word occurs once)")
    inst = src.instance
    require((isinstance(inst, int) and not isinstance(inst, bool) and inst >= 1) or inst in choices(InstanceChoice), f"{p}.instance",
             f"{inst!r} is not one of {', '.join(choices(InstanceChoice))} or a number k ≥ 1 (the k-th from the `order` side)")
    choice(src.order, Order, f"{p}.order")
    at_least(src.margin, 0, f"{p}.margin", " px")
    choice(src.region, SourceRegion, f"{p}.region")
    require(0 < src.threshold <= 1, f"{p}.threshold", f"must be in (0, 1] (default 0.5), got {src.threshold}")
    require(-1 <= src.similarity <= 1, f"{p}.similarity", f"is a cosine, in [-1, 1] (default 0.6), got {src.similarity}")
    at_least(src.colour_weight, 0, f"{p}.colour_weight")
    require(len(src.timesteps) > 0 and all(0 <= t < 1000 for t in src.timesteps), f"{p}.timesteps",
             f"must be scheduler timesteps in [0, 1000), e.g. [50, 150], got {src.timesteps}")
    if src.attention_cell_px is not None:
        at_least(src.attention_cell_px, 1, f"{p}.attention_cell_px", " px")


def value_of(obj, name: str, default=None):
    """A setting of a config object or of a dict given from Python: the one place that tells
    the two apart."""
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


# A dict object from Python may give its region ready-made: `region` (a reatco.regions.region.Region).
_OBJECT_KEYS = tuple(f.name for f in fields(ObjectConfig)) + ("region",)


def validate_object(obj, field_: str = "objects[0]") -> str:
    """One user's object, checked alike wherever it comes from (load_config, the pipeline's
    `objects=`, EditRunner): an ObjectConfig or a dict of its fields; its word, its occurrence,
    exactly one region. Returns the region's kind (box, boxes, mask, boxes_file, source or
    region). Where the word is in the prompt is reatco.tokens' check, the region's geometry
    reatco.regions.region.parse_region's."""
    if isinstance(obj, dict):
        for key in obj:
            if key not in _OBJECT_KEYS:  # the YAML loader's wording for an unknown key
                raise unknown_key(field_, key, ObjectConfig, extra=("region",))
    elif not is_dataclass(obj):
        raise ConfigError(field_, f"an object is a mapping (word, occurrence, and one region), got {obj!r}")
    word = value_of(obj, "word")
    require(isinstance(word, str) and bool(word.strip()), f"{field_}.word",
             f"must name a word of the edit prompt, got {word!r}")
    occurrence = value_of(obj, "occurrence")
    require(occurrence is None or (isinstance(occurrence, int) and not isinstance(occurrence, bool) and occurrence >= 1),
             f"{field_}.occurrence", f"must be ≥ 1 (1 = first occurrence; null if the word occurs once), got {occurrence!r}")
    kind = region_kind(obj, field_)
    require(value_of(obj, "track") is None or value_of(obj, "boxes_file") is not None, f"{field_}.track",
             "names an object of boxes_file; give boxes_file too")
    return kind


def region_kind(obj, field_: str = "objects[0]") -> str:
    """Which region an object gives: exactly one of REGION_KEYS (or, from Python, `region`)."""
    given = [n for n in REGION_KEYS + ("region",) if value_of(obj, n) is not None]
    require(len(given) == 1, field_, f"give exactly one of box, boxes, mask, boxes_file or source (from Python also "
                                      f"region=, a reatco.regions.region.Region) (got {' and '.join(given) or 'none'})")
    return given[0]
