"""Tracked regions (source: {tracker: sam2 | sam3}): the mapping from a tracker's masks to the
object's region, exact with a stand-in tracker that returns known masks; every bad prompt refused
before any weights load; masks cached by content; and a whole edit on the shapes model."""

import json
from pathlib import Path

import numpy as np
import pytest

from reatco.config_files import load_config
from reatco.errors import ConfigError
from reatco.regions.settings import SourceRegionConfig
from reatco.regions.trackers import Tracked, region_from_tracked, track_source_regions

ROOT = Path(__file__).resolve().parents[1]
FAST = ["tune.steps=3", "sampling.steps=4", "rad.max_update_steps=2", "rad.refinement_thresholds={}"]


def _two_instances(n_frames=4, size=32):
    """Instance 0 moves right along the top; instance 1 sits at the bottom left, lost in frame 2."""
    masks = np.zeros((2, n_frames, size, size), bool)
    for f in range(n_frames):
        masks[0, f, 2:9, 10 + f:17 + f] = True
        if f != 2:
            masks[1, f, 20:30, 1:6] = True
    return Tracked(masks, np.array([0.9, 0.6]))


class StandIn:
    """A tracker that returns fixed masks, and counts how often it is made and asked."""

    def __init__(self, tracked):
        self.tracked, self.made, self.calls = tracked, 0, []

    def __call__(self, name, model, device, progress, field):
        self.made += 1
        return self

    def track(self, frames, query=None, box=None, point=None, frame=0):
        self.calls.append(dict(query=query, box=box, point=point, frame=frame))
        return self.tracked


def test_masks_become_the_region_exactly():
    tracked = _two_instances()
    region = region_from_tracked(tracked, {"instance": "right"}, "s")
    assert region.kind == "mask"
    assert (region.pixel_masks.numpy() == tracked.masks[0]).all()
    boxes = region_from_tracked(tracked, {"instance": "right", "region": "boxes"}, "s").boxes.numpy()
    assert boxes.tolist() == [[10 + f, 2, 17 + f, 9] for f in range(4)]
    typed = region_from_tracked(tracked, SourceRegionConfig(instance="right", region="boxes"), "s").boxes.numpy()
    assert typed.tolist() == boxes.tolist()  # a dict spec is typed into the same settings
    # margin grows the mask by that many pixels each way (a square structuring element)
    grown = region_from_tracked(tracked, {"instance": 1, "order": "right", "margin": 2}, "s").pixel_masks.numpy()
    expected = np.zeros_like(tracked.masks[0])
    for f in range(4):
        expected[f, 0:11, 8 + f:19 + f] = True
    assert (grown == expected).all()


def test_a_frame_where_the_instance_is_lost_is_filled_from_its_neighbours():
    tracked = _two_instances()
    region = region_from_tracked(tracked, {"instance": "left", "region": "boxes"}, "s")
    assert region.boxes.numpy().tolist() == [[1, 20, 6, 30]] * 4  # frame 2 interpolated
    masks = region_from_tracked(tracked, {"instance": "left"}, "s").pixel_masks.numpy()
    assert (masks[2] == tracked.masks[1, 0]).all()  # the interpolated box, filled


def test_instance_all_takes_the_union_and_whole_cells_round_out():
    tracked = _two_instances()
    union = region_from_tracked(tracked, {"instance": "all"}, "s").pixel_masks.numpy()
    assert (union == tracked.masks.any(0)).all()
    cells = region_from_tracked(tracked, {"instance": "right", "region": "boxes"}, "s", whole_cells=4).boxes.numpy()
    assert cells.tolist() == [[8, 0, 20, 12], [8, 0, 20, 12], [12, 0, 20, 12], [12, 0, 20, 12]]


def test_nothing_found_and_an_instance_out_of_range_name_the_field_and_the_fix():
    tracked = _two_instances()
    with pytest.raises(ConfigError) as err:
        region_from_tracked(tracked, {"query": "dolphin", "score": 0.95}, "edits[0].objects[0].source")
    assert err.value.field == "edits[0].objects[0].source.score"
    assert "no 'dolphin' found in frames 0–3 with score ≥ 0.95 (best score 0.90); lower `score` or give a box" in str(err.value)
    empty = Tracked(np.zeros((0, 4, 8, 8), bool), np.zeros(0))
    with pytest.raises(ConfigError, match="no 'dolphin' found in frames 0–3") as err:
        region_from_tracked(empty, {"query": "dolphin"}, "s")
    assert err.value.field == "s.query"
    with pytest.raises(ConfigError, match="asks for instance 3 counted from the left, but 2 were found") as err:
        region_from_tracked(tracked, {"instance": 3}, "s")
    assert err.value.field == "s.instance"


@pytest.mark.parametrize("source, field, words", [
    ("{tracker: sam2, box: [10, 10, 30, 30], frame: 8}", "frame", "frames 0–7"),
    ("{tracker: sam2, box: [10, 10, 70, 30], frame: 1}", "box", "not inside the 64×64 frame"),
    ("{tracker: sam2, box: [30, 10, 10, 30]}", "box", "x1 < x2"),
    ("{tracker: sam2, point: [64, 3]}", "point", "outside the 64×64 frame"),
    ("{tracker: sam2}", "box", "exactly one of box"),
    ("{tracker: sam2, box: [1, 1, 9, 9], query: dolphin}", "query", "is for sam3"),
    ("{tracker: sam3}", "query", "is empty"),
    ("{tracker: sam3, query: circle, box: [1, 1, 9, 9]}", "box", "is for sam2"),
    ("{tracker: sam4, query: circle}", "tracker", "not one of sam2, sam3"),
    ("{word: red circle, box: [1, 1, 9, 9]}", "box", "is for a tracker"),
])
def test_bad_tracker_prompts_are_refused_when_the_config_loads(tmp_path, source, field, words):
    yaml = tmp_path / "c.yaml"
    yaml.write_text(f"base_config: {ROOT / 'configs' / 'shapes.yaml'}\noutput_dir: {tmp_path / 'out'}\nedits:\n"
                    f"  - name: e\n    prompt: a green circle and a yellow triangle on a gray background\n    objects:\n"
                    f"      - {{word: green circle, source: {source}}}\n")
    with pytest.raises(ConfigError, match=words) as err:
        load_config(yaml)
    assert err.value.field == f"edits[0].objects[0].source.{field}"


def test_the_prompt_is_checked_against_the_clip_before_any_weights_load():
    stand_in = StandIn(_two_instances())
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    for spec, field in (({"tracker": "sam2", "box": [0, 0, 8, 8], "frame": 4}, "s.frame"),
                        ({"tracker": "sam2", "box": [0, 0, 40, 8]}, "s.box"),
                        ({"tracker": "sam2", "point": [3, 32]}, "s.point")):
        with pytest.raises(ConfigError) as err:
            track_source_regions(frames, [spec], ["s"], make_tracker=stand_in)
        assert err.value.field == field
    assert stand_in.made == 0 and stand_in.calls == []


def test_tracked_masks_are_cached_by_content(tmp_path):
    stand_in = StandIn(_two_instances())
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    spec = {"tracker": "sam2", "model": str(tmp_path / "weights"), "box": [10, 2, 17, 9], "frame": 0}
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"one")
    first = track_source_regions(frames, [spec], cache_dir=tmp_path / "cache", make_tracker=stand_in)[0]
    again = track_source_regions(frames, [spec], cache_dir=tmp_path / "cache", make_tracker=stand_in)[0]
    assert stand_in.made == 1 and len(stand_in.calls) == 1  # the second came from the cache
    assert (first.pixel_masks == again.pixel_masks).all()
    assert stand_in.calls[0] == dict(query=None, box=[10, 2, 17, 9], point=None, frame=0)
    # other frames, another prompt or other weights track again
    track_source_regions(frames + 1, [spec], cache_dir=tmp_path / "cache", make_tracker=stand_in)
    track_source_regions(frames, [dict(spec, frame=1)], cache_dir=tmp_path / "cache", make_tracker=stand_in)
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"two")
    track_source_regions(frames, [spec], cache_dir=tmp_path / "cache", make_tracker=stand_in)
    assert len(stand_in.calls) == 4


def _demo_truth_masks():
    """The demo's blue square and red circle, exact (colour segmentation of the source frames)."""
    from PIL import Image

    from reatco.toy.detector import NAMES, classify_pixels

    frames = sorted((ROOT / "data" / "shapes-demo" / "frames").glob("*.png"))
    colours = np.stack([classify_pixels(np.asarray(Image.open(p).convert("RGB"))) for p in frames])
    return np.stack([colours == NAMES.index("blue"), colours == NAMES.index("red")])


def test_a_tracked_edit_on_the_shapes_model_writes_reusable_regions(tmp_path):
    """A box on frame 3 (sam2) and a word (sam3) → the stand-in's masks → the edit's regions, written
    to regions.json and its mask PNGs; the tracker runs before the edit's models load; rerunning
    from regions.json gives the same regions without any tracker."""
    from reatco.runner import EditRunner

    truth = _demo_truth_masks()  # (2, 8, 64, 64): square, circle
    yaml = tmp_path / "c.yaml"
    yaml.write_text(f"base_config: {ROOT / 'configs' / 'shapes.yaml'}\noutput_dir: {tmp_path / 'out'}\n"
                    f"cache_dir: {tmp_path / 'cache'}\nedits:\n"
                    "  - name: tracked\n    prompt: a green circle and a yellow triangle on a gray background\n    objects:\n"
                    "      - {word: green circle, source: {tracker: sam3, query: circle, model: " + str(tmp_path / 'sam3') + "}}\n"
                    "      - {word: yellow triangle, source: {tracker: sam2, box: [13, 7, 32, 25], frame: 3, region: boxes, "
                    "model: " + str(tmp_path / 'sam2') + "}}\n")
    cfg = load_config(yaml, FAST)
    runner = EditRunner(cfg, progress=False)
    seen = []

    class Order(StandIn):
        def track(self, frames, **prompt):
            seen.append((runner._pipe is None, frames.shape))
            if prompt["query"]:  # sam3: every shape it was asked about… here both, the circle scoring higher
                return Tracked(truth[::-1], np.array([0.8, 0.3]))
            return Tracked(truth[:1], np.array([0.95]))

    runner.make_tracker = Order(None)
    cfg.edits[0].objects[0].source.score = 0.5
    prepared = runner.prepare()
    result = runner.run(prepared[0])
    assert seen == [(True, (8, 64, 64, 3)), (True, (8, 64, 64, 3))]  # before the edit's models
    circle, square = prepared[0].regions
    assert circle.kind == "mask" and square.kind == "boxes"
    from reatco.regions.finding import round_out_masks

    assert (circle.pixel_masks.numpy() == round_out_masks(truth[1], 4)).all()
    from reatco.regions.region import mask_box

    assert square.boxes.numpy().tolist() == [[float(v // 4 * 4) if i < 2 else float(-(-v // 4) * 4)
                                               for i, v in enumerate(mask_box(m))] for m in truth[0]]
    folder = Path(result.out_dir) if getattr(result, "out_dir", None) else tmp_path / "out" / "tracked"
    doc = json.loads((folder / "regions.json").read_text())
    assert doc["objects"][0]["source"].startswith("source: tracker sam3")
    assert "box [13.0, 7.0, 32.0, 25.0] on frame 3" in doc["objects"][1]["source"]

    # the written regions rerun the edit without the tracker
    again = load_config(ROOT / "configs" / "shapes.yaml", [f"output_dir={tmp_path / 'again'}", *FAST])
    for obj in again.edits[0].objects:
        obj.box = obj.boxes = None
        obj.boxes_file, obj.track = str(folder / "regions.json"), obj.word
    rerun = EditRunner(again, progress=False).prepare()[0]
    assert (rerun.regions[0].pixel_masks.bool() == circle.pixel_masks.bool()).all()
    assert rerun.regions[1].boxes.tolist() == square.boxes.tolist()


# ----------------------------------------------------------------------------- tiny real trackers


def tiny_sam2_video(folder: Path, size: int = 64) -> Path:
    """A random SAM 2 video model and its processor, about 1 M parameters at `size` px, saved to
    `folder` the way a hub checkpoint is (config, weights, processor). Constraints of transformers'
    code met here: a stage's first block may not be global, the memory cross-attention reads 64
    channels (memory_encoder_output_channels), and the hidden size is a multiple (> 1) of them."""
    import torch
    from transformers import Sam2VideoConfig, Sam2VideoModel, Sam2VideoProcessor
    from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    s = size
    config = Sam2VideoConfig(
        image_size=s,
        vision_config=dict(
            backbone_config=dict(model_type="sam2_hiera_det_model", hidden_size=8, image_size=[s, s], embed_dim_per_stage=[8, 16, 32, 64],
                                 blocks_per_stage=[1, 1, 1, 2], num_attention_heads_per_stage=[1, 1, 1, 1],
                                 window_size_per_stage=[4, 4, 4, 2], global_attention_blocks=[4],
                                 window_positional_embedding_background_size=[2, 2]),
            backbone_channel_list=[64, 32, 16, 8], backbone_feature_sizes=[[s // 4] * 2, [s // 8] * 2, [s // 16] * 2],
            fpn_hidden_size=128),
        prompt_encoder_config=dict(hidden_size=128, image_size=s, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        memory_attention_hidden_size=128, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[s // 16, s // 16], memory_encoder_hidden_size=128, memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=64, num_maskmem=3)
    torch.manual_seed(0)
    Sam2VideoModel(config).eval().save_pretrained(folder)
    Sam2VideoProcessor(image_processor=Sam2ImageProcessor(size={"height": s, "width": s}, mask_size={"height": s // 4, "width": s // 4}),
                       video_processor=Sam2VideoVideoProcessor(size={"height": s, "width": s})).save_pretrained(folder)
    return folder


def test_a_tiny_sam2_video_model_drives_a_tracked_edit(tmp_path):
    """A box on frame 3 → SAM 2 (random weights: the masks say nothing about accuracy) → a mask per
    frame → the region → an edit on the shapes model; the masks are cached, so a second runner
    does not load the tracker."""
    from reatco.regions import trackers as region_trackers
    from reatco.runner import EditRunner

    weights = tiny_sam2_video(tmp_path / "sam2")
    yaml = tmp_path / "c.yaml"
    yaml.write_text(f"base_config: {ROOT / 'configs' / 'shapes.yaml'}\noutput_dir: {tmp_path / 'out'}\n"
                    f"cache_dir: {tmp_path / 'cache'}\nedits:\n"
                    "  - name: tracked\n    prompt: a green circle and a yellow triangle on a gray background\n    objects:\n"
                    "      - {word: yellow triangle, source: {tracker: sam2, box: [13, 7, 32, 25], frame: 3, score: 0, "
                    f"model: {weights}}}}}\n")
    cfg = load_config(yaml, FAST)
    loaded = []

    def counting(*args):
        loaded.append(args[:2])
        return region_trackers.load_tracker(*args)

    runner = EditRunner(cfg, progress=False)
    runner.make_tracker = counting
    prepared = runner.prepare()[0]
    runner.run(prepared)
    assert loaded == [("sam2", str(weights))]
    region = prepared.regions[0]
    assert region.kind == "mask" and region.pixel_masks.shape == (8, 64, 64)
    cached = list((tmp_path / "cache" / "tracks").glob("*.npz"))
    assert len(cached) == 1
    from reatco.regions.finding import round_out_masks

    with np.load(cached[0]) as data:
        masks = data["masks"]
    assert masks.shape == (1, 8, 64, 64)
    seen = [f for f in range(8) if masks[0, f].any()]
    assert seen  # else the region would have been refused ("no … found")
    for f in seen:  # the tracked mask, rounded out to the 4 px latent cells
        assert (region.pixel_masks.numpy()[f] == round_out_masks(masks[0, f][None], 4)[0]).all(), f
    doc = json.loads((tmp_path / "out" / "tracked" / "regions.json").read_text())
    assert doc["objects"][0]["source"].startswith("source: tracker sam2")

    again = EditRunner(load_config(yaml, FAST), progress=False)
    again.make_tracker = counting
    second = again.prepare()[0]
    again.resolve_regions(second, without_pipeline=True)
    assert len(loaded) == 1  # from the cache
    assert (second.regions[0].pixel_masks == region.pixel_masks).all()


def tiny_sam3_video(folder: Path, size: int = 56) -> Path:
    """A random SAM 3 video model (detector + tracker, about 4 M parameters at `size` px) and its
    processor, with the shapes model's CLIP tokenizer, saved to `folder` like a hub checkpoint.
    The detector's FPN width is the tracker's hidden size (the tracker reads its features); the
    detection thresholds are 0 and hotstart off, so random weights still yield instances."""
    import torch
    from transformers import CLIPTokenizer, Sam3VideoConfig, Sam3VideoModel, Sam3VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

    s, cells = size, size // 14
    tokenizer = CLIPTokenizer.from_pretrained(ROOT / "data" / "shapes-model" / "tokenizer")
    sizes = [[cells * 4] * 2, [cells * 2] * 2, [cells] * 2]
    vision = dict(backbone_config=dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=s, patch_size=14, window_size=2, global_attn_indexes=[1],
                                       pretrain_image_size=s),
                  fpn_hidden_size=128, backbone_feature_sizes=sizes)
    detector = dict(
        vision_config=vision,
        text_config=dict(model_type="clip_text_model", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         projection_dim=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        geometry_encoder_config=dict(hidden_size=128, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_encoder_config=dict(hidden_size=128, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_decoder_config=dict(hidden_size=128, num_layers=1, num_queries=8, num_attention_heads=2, intermediate_size=64),
        mask_decoder_config=dict(hidden_size=128, num_attention_heads=2))
    tracker = dict(
        image_size=s, vision_config=vision,
        prompt_encoder_config=dict(hidden_size=128, image_size=s, patch_size=14, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        memory_attention_hidden_size=128, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[cells, cells], memory_encoder_hidden_size=128, memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=64, num_maskmem=3)
    config = Sam3VideoConfig(detector_config=detector, tracker_config=tracker, low_res_mask_size=cells * 4, hotstart_delay=0,
                             score_threshold_detection=0.0, new_det_thresh=0.0)
    torch.manual_seed(0)
    Sam3VideoModel(config).eval().save_pretrained(folder)
    Sam3VideoProcessor(image_processor=Sam3ImageProcessor(size={"height": s, "width": s}),
                       video_processor=Sam2VideoVideoProcessor(size={"height": s, "width": s}),
                       tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_a_tiny_sam3_video_model_drives_a_tracked_edit(tmp_path):
    """A word → SAM 3 (random weights: instances but no accuracy) → every instance's masks → the
    chosen instance (the largest) → the region → an edit on the shapes model."""
    from reatco.regions.trackers import Sam3Tracker
    from reatco.runner import EditRunner

    weights = tiny_sam3_video(tmp_path / "sam3")
    frames = (np.random.default_rng(0).random((4, 64, 64, 3)) * 255).astype(np.uint8)
    tracked = Sam3Tracker(str(weights), progress=False).track(frames, query="circle")
    assert tracked.masks.shape[1:] == (4, 64, 64) and len(tracked.scores) == tracked.masks.shape[0] > 0

    yaml = tmp_path / "c.yaml"
    yaml.write_text(f"base_config: {ROOT / 'configs' / 'shapes.yaml'}\noutput_dir: {tmp_path / 'out'}\n"
                    f"cache_dir: {tmp_path / 'cache'}\nedits:\n"
                    "  - name: tracked\n    prompt: a green circle and a yellow triangle on a gray background\n    objects:\n"
                    "      - {word: green circle, source: {tracker: sam3, query: circle, score: 0, region: boxes, "
                    f"model: {weights}}}}}\n")
    runner = EditRunner(load_config(yaml, FAST), progress=False)
    prepared = runner.prepare()[0]
    runner.run(prepared)
    region = prepared.regions[0]
    assert region.kind == "boxes" and region.boxes.shape == (8, 4)
    with np.load(next((tmp_path / "cache" / "tracks").glob("*.npz"))) as data:
        masks, scores = data["masks"], data["scores"]
    # the largest instance (mean area over the frames it is seen in), its boxes rounded out to 4 px cells
    areas = [masks[k][masks[k].any(axis=(1, 2))].sum(axis=(1, 2)).mean() if masks[k].any() else -1 for k in range(len(scores))]
    best = int(np.argmax(areas))
    from reatco.regions.region import mask_box

    for f in range(8):
        if masks[best, f].any():
            x1, y1, x2, y2 = mask_box(masks[best, f])
            assert region.boxes[f].tolist() == [x1 // 4 * 4, y1 // 4 * 4, -(-x2 // 4) * 4, -(-y2 // 4) * 4], f
    assert json.loads((tmp_path / "out" / "tracked" / "regions.json").read_text())["objects"][0]["source"].startswith("source: tracker sam3")


def test_as_box_is_the_region_setting_and_weights_folders_are_read_beside_the_config(tmp_path):
    (tmp_path / "weights").mkdir()
    yaml = tmp_path / "c.yaml"
    yaml.write_text(f"base_config: {ROOT / 'configs' / 'shapes.yaml'}\noutput_dir: {tmp_path / 'out'}\nedits:\n"
                    "  - name: e\n    prompt: a green circle and a yellow triangle on a gray background\n    objects:\n"
                    "      - {word: green circle, source: {tracker: sam3, query: circle, as: box, model: weights}}\n"
                    "      - {word: yellow triangle, source: {tracker: sam2, point: [20, 15], model: facebook/sam2.1-hiera-tiny}}\n")
    first, second = (o.source for o in load_config(yaml).edits[0].objects)
    assert first.region == "boxes" and first.model == str(tmp_path / "weights")
    assert second.region is None and second.model == "facebook/sam2.1-hiera-tiny"  # a hub id stays
    yaml.write_text(yaml.read_text().replace("as: box,", "as: box, region: mask,"))
    with pytest.raises(ConfigError, match="either `as` or `region`") as err:
        load_config(yaml)
    assert err.value.field == "edits[0].objects[0].source.as"


def test_missing_weights_name_the_model_field(tmp_path):
    from reatco.regions.trackers import load_tracker

    with pytest.raises(ConfigError, match="could not load sam2 weights") as err:
        load_tracker("sam2", str(tmp_path / "nothing-here"), field="edits[0].objects[0].source.tracker")
    assert err.value.field == "edits[0].objects[0].source.model"
