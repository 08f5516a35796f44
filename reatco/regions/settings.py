"""The objects of an edit (`edits[k].objects`): their schema, region kinds and checks."""

from dataclasses import dataclass, field, fields
from typing import Any, List, Literal, Optional

from ..errors import ConfigError
from ..model_files import check_model_cell
from ..schema import at_least, choice, choices, require, short, unknown_key


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
    # A video object tracker instead (reatco/regions/trackers.py): sam3 (a text `query` → every
    # instance, tracked) | sam2 (a `box` or a click `point` on `frame` → that object, tracked).
    tracker: Optional[str] = None
    # The tracker's weights: a hub id or local folder; null: facebook/sam3 | facebook/sam2.1-hiera-large.
    model: Optional[str] = None
    # sam2: [x1, y1, x2, y2] or a click [x, y] in pixels of the working size (video.width × height),
    # on the clip's frame `frame` (0-based).
    box: Optional[List[float]] = None
    point: Optional[List[float]] = None
    frame: int = 0
    # Detector or tracker: keep instances scoring at least this (VISOR's OWL-ViT threshold: 0.1).
    score: float = 0.1
    # Which instance when several are found: largest | left | right | top | bottom (by mean
    # centre over the frames) | all (the box around every instance) | k ≥ 1 (the k-th counted
    # from the `order` side).
    instance: Any = "largest"
    # Where instance k counts from: left | right | top | bottom.
    order: str = "left"
    # Pixels added around the found object on every side.
    margin: float = 0.0
    # boxes (per-frame boxes) | mask (per-frame masks of the found blobs or tracked masks).
    # null: mask for a tracker, boxes otherwise.
    region: Optional[str] = None
    # Attention: the word's seed blobs are where its map is ≥ threshold × the frame's peak.
    threshold: float = 0.5
    # Attention: a seed grows over the pixels whose features (the UNet's finest features and the
    # source colours, each scaled to unit RMS over the frame, the colours then with colour_weight
    # times the features' say) have cosine ≥ similarity with the seed's.
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
Tracker = Literal["sam2", "sam3"]


def validate_source(src: SourceRegionConfig, video, pretrained, p: str) -> None:
    """Check an object's `source:` (ConfigError naming `p`.field). video: the run's `video`
    section (its prompt, n_frames, height, width); pretrained: model.pretrained (the cells it has)."""
    source_prompt = video.prompt
    if src.tracker is not None:
        _validate_tracker_source(src, video, p)
    elif src.detector:
        require(bool(src.query and src.query.strip()), f"{p}.query", "is empty; a detector needs a text query, e.g. \"a dolphin\"")
        require(src.word is None, f"{p}.word", "give either word (the model's own attention) or detector + query, not both")
        require(0 <= src.score <= 1, f"{p}.score", f"must be in [0, 1] (default 0.1), got {src.score}")
    else:
        require(bool(src.word and src.word.strip()), f"{p}.word",
                 "is empty; name the word of the source prompt (video.prompt) for the object, or set detector + query")
        check_word(src.word, f"{p}.word")
        require(bool(source_prompt.strip()), "video.prompt", f"is empty, but {p}.word looks for a word in it")
        require(src.query is None, f"{p}.query", "is for detector or tracker: set one of them too, or use word")
    if src.tracker is None:
        for key in ("model", "box", "point"):
            require(getattr(src, key) is None, f"{p}.{key}", "is for a tracker: set tracker (sam2 or sam3) too")
    if src.occurrence is not None:
        at_least(src.occurrence, 1, f"{p}.occurrence", " (1 = first occurrence; null if the word occurs once)")
    inst = src.instance
    require((isinstance(inst, int) and not isinstance(inst, bool) and inst >= 1) or inst in choices(InstanceChoice), f"{p}.instance",
             f"{inst!r} is not one of {', '.join(choices(InstanceChoice))} or a number k ≥ 1 (the k-th from the `order` side)")
    choice(src.order, Order, f"{p}.order")
    at_least(src.margin, 0, f"{p}.margin", " px")
    if src.region is not None:
        choice(src.region, SourceRegion, f"{p}.region")
    require(0 < src.threshold <= 1, f"{p}.threshold", f"must be in (0, 1] (default 0.5), got {src.threshold}")
    require(-1 <= src.similarity <= 1, f"{p}.similarity", f"is a cosine, in [-1, 1] (default 0.6), got {src.similarity}")
    at_least(src.colour_weight, 0, f"{p}.colour_weight")
    require(len(src.timesteps) > 0 and all(0 <= t < 1000 for t in src.timesteps), f"{p}.timesteps",
             f"must be scheduler timesteps in [0, 1000), e.g. [50, 150], got {src.timesteps}")
    if src.attention_cell_px is not None:
        cell = src.attention_cell_px
        at_least(cell, 1, f"{p}.attention_cell_px", " px (null: the model's finest level near RAD's)")
        require(cell & (cell - 1) == 0 and video.height % cell == 0 and video.width % cell == 0,
                f"{p}.attention_cell_px", f"{cell} px must be a power of two that divides video.height and video.width "
                f"({video.height}×{video.width}); null picks the model's own")
        check_model_cell(cell, pretrained, f"{p}.attention_cell_px")


def _validate_tracker_source(src: SourceRegionConfig, video, p: str) -> None:
    """A tracker source's own fields; its frame, box and point against the clip are checked by
    region_trackers.check_tracker_prompt once the clip's frame count is known (still before any
    weights load)."""
    choice(src.tracker, Tracker, f"{p}.tracker")
    require(src.word is None and src.detector is None, f"{p}.tracker",
            "give one of word (the model's attention), detector + query, or tracker, not several")
    if src.model is not None:
        require(bool(str(src.model).strip()), f"{p}.model", "is empty; give a hub id or a local folder, or null for the default")
    if src.tracker == "sam3":
        require(bool(src.query and str(src.query).strip()), f"{p}.query",
                "is empty; sam3 tracks every instance of a text query, e.g. \"dolphin\" (or use sam2 with a box)")
        for key in ("box", "point"):
            require(getattr(src, key) is None, f"{p}.{key}", "is for sam2; sam3 finds its instances from `query`")
    else:
        require(src.query is None, f"{p}.query", "is for sam3; sam2 follows a `box` or a click `point` on `frame`")
        require((src.box is None) != (src.point is None), f"{p}.box",
                "sam2 needs exactly one of box [x1, y1, x2, y2] or point [x, y] on `frame`")
        if src.box is not None:
            require(len(src.box) == 4, f"{p}.box", f"is [x1, y1, x2, y2] in pixels, got {list(src.box)}")
        if src.point is not None:
            require(len(src.point) == 2, f"{p}.point", f"is a click [x, y] in pixels, got {list(src.point)}")
    require(not isinstance(src.frame, bool) and isinstance(src.frame, int) and src.frame >= 0, f"{p}.frame",
            f"is the 0-based frame of the clip the box or point is on, got {src.frame!r}")
    require(0 <= src.score <= 1, f"{p}.score", f"must be in [0, 1] (default 0.1), got {src.score}")
    if video.n_frames is not None:
        require(src.frame < video.n_frames, f"{p}.frame",
                f"is {src.frame}, but the clip has frames 0–{video.n_frames - 1} (video.n_frames {video.n_frames})")
    if src.box is not None and len(src.box) == 4:
        x1, y1, x2, y2 = src.box
        require(0 <= x1 < x2 <= video.width and 0 <= y1 < y2 <= video.height, f"{p}.box",
                f"{list(src.box)} is not inside the {video.width}×{video.height} frame with x1 < x2 and y1 < y2 "
                "(pixels of video.width × video.height)")
    if src.point is not None and len(src.point) == 2:
        x, y = src.point
        require(0 <= x < video.width and 0 <= y < video.height, f"{p}.point",
                f"{list(src.point)} is outside the {video.width}×{video.height} frame (pixels of video.width × video.height)")


def check_word(word: str, field_: str) -> None:
    """A word of interest has a letter or a digit: punctuation and emoji carry no object the
    attention could place (a "," token attends everywhere; "🟢" is byte pieces)."""
    require(any(ch.isalnum() for ch in word), field_,
            f"{word!r} has no letter or digit: name a word of the prompt for the object (e.g. \"circle\"), "
            "not punctuation or an emoji")


@dataclass
class RegionObject(ObjectConfig):
    """An object given from Python with its region ready-made: `region`, a
    reatco.regions.region.Region (found with reatco.regions.finding, tracked, or built). Not a
    YAML key: a config's objects are ObjectConfigs."""

    region: Any = None


# A dict object from Python may give its region ready-made: `region` (a reatco.regions.region.Region).
_OBJECT_KEYS = tuple(f.name for f in fields(ObjectConfig)) + ("region",)


def object_settings(obj, field_: str = "objects[0]") -> ObjectConfig:
    """An object as a user gives it → its typed settings, once, where user input enters (the
    config loader types YAML; the pipelines' calls, `pipeline_arguments` and the region finders
    call this). A dict (a notebook's `objects=[{"word": …, "box": …}]`) becomes an ObjectConfig
    (a RegionObject with `region`), its unknown keys refused in the YAML loader's wording and its
    `source` mapping typed too; its values are kept as given (a mask may be a tensor from Python),
    for the checks behind to judge. An ObjectConfig passes as it is. Everything behind this reads
    attributes only."""
    if isinstance(obj, ObjectConfig):
        return obj
    if not isinstance(obj, dict):
        raise ConfigError(field_, f"an object is a mapping (word, occurrence, and one region), got {short(obj)}")
    for key in obj:
        if key not in _OBJECT_KEYS:  # the YAML loader's wording for an unknown key
            raise unknown_key(field_, key, ObjectConfig, extra=("region",))
    values = {"word": None, **obj}  # a missing word is reported as missing (None), not as ""
    if values.get("source") is not None:
        values["source"] = source_settings(values["source"], f"{field_}.source")
    return RegionObject(**values) if "region" in values else ObjectConfig(**values)


def source_settings(spec, field_: str = "objects[0].source") -> SourceRegionConfig:
    """An object's `source` as a user gives it → a SourceRegionConfig (a dict's unknown keys
    refused naming the field, its left-out settings the schema's defaults). A SourceRegionConfig
    passes as it is."""
    if isinstance(spec, SourceRegionConfig):
        return spec
    if not isinstance(spec, dict):
        raise ConfigError(field_, "is a mapping: {word: <source prompt word>}, {detector: …, query: …} or "
                                  f"{{tracker: sam2 | sam3, …}}, got {short(spec)}")
    for key in spec:
        if key not in _SOURCE_KEYS:
            raise unknown_key(field_, key, SourceRegionConfig)
    return SourceRegionConfig(**spec)


_SOURCE_KEYS = tuple(f.name for f in fields(SourceRegionConfig))


def validate_object(obj: ObjectConfig, field_: str = "objects[0]") -> str:
    """One user's object (typed by `object_settings` or the config loader), checked alike
    wherever it comes from (load_config, the pipeline's `objects=`, EditRunner): its word, its
    occurrence, exactly one region. Returns the region's kind (box, boxes, mask, boxes_file,
    source or region). Where the word is in the prompt is reatco.tokens' check, the region's
    geometry reatco.regions.parsing.parse_region's."""
    word = obj.word
    require(isinstance(word, str) and bool(word.strip()), f"{field_}.word",
             f"must name a word of the edit prompt, got {word!r}")
    check_word(word, f"{field_}.word")
    occurrence = obj.occurrence
    require(occurrence is None or (isinstance(occurrence, int) and not isinstance(occurrence, bool) and occurrence >= 1),
             f"{field_}.occurrence", f"must be ≥ 1 (1 = first occurrence; null if the word occurs once), got {occurrence!r}")
    kind = region_kind(obj, field_)
    require(obj.track is None or obj.boxes_file is not None, f"{field_}.track",
             "names an object of boxes_file; give boxes_file too")
    return kind


def region_kind(obj: ObjectConfig, field_: str = "objects[0]") -> str:
    """Which region an object gives: exactly one of REGION_KEYS (or, from Python, `region`)."""
    given = [n for n in REGION_KEYS if getattr(obj, n) is not None]
    if isinstance(obj, RegionObject) and obj.region is not None:
        given.append("region")
    require(len(given) == 1, field_, f"give exactly one of box, boxes, mask, boxes_file or source (from Python also "
                                      f"region=, a reatco.regions.region.Region) (got {' and '.join(given) or 'none'})")
    return given[0]
