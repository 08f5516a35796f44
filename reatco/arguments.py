"""From a config to a pipeline call (ReAtCoPipeline, or WanReAtCoPipeline for a Wan model), for notebooks:

    cfg = load_config("configs/shapes.yaml")
    pipe = ReAtCoPipeline.from_pretrained(cfg.model.pretrained)
    out = pipe(**pipeline_arguments(cfg, "triangle-and-circle"))

`scripts/edit.py` does more around the same call (tuning, cached inversion, outputs); this gives
the call itself, with the edit's own rad/irjs/sampling/window overrides merged in.
"""

from __future__ import annotations

from typing import Any

from .regions.settings import region_kind


def _edit(cfg, edit):
    from .config import EditConfig, ReAtCoConfig
    from .errors import ConfigError

    if not isinstance(cfg, ReAtCoConfig):
        raise TypeError(f"pipeline_arguments takes a loaded config (reatco.load_config(path)), got {type(cfg).__name__}")
    edits = list(cfg.edits)
    if edit is None:
        if not edits:
            raise ValueError("the config has no edits; add one under edits: or pass edit=EditConfig(...)")
        return edits[0]
    if isinstance(edit, bool) or not isinstance(edit, (int, str, EditConfig)):
        raise TypeError(f"edit is an edit's name, its index or an EditConfig, got {type(edit).__name__}")
    if isinstance(edit, int):
        if not -len(edits) <= edit < len(edits):
            raise ConfigError("edit", f"index {edit} is out of range: the config has {len(edits)} edit(s) "
                                      f"{[e.name for e in edits]}; give an index below {len(edits)} or a name")
        return edits[edit]
    if isinstance(edit, str):
        for e in edits:
            if e.name == edit:
                return e
        raise ValueError(f"no edit named {edit!r}; the config has {[e.name for e in edits]}")
    return edit


def _object(cfg, edit, j: int) -> dict:
    """Object j of `edit` as the pipeline takes it, through the runner's own dispatch
    (regions.objects.object_region): every region kind passes."""
    obj = edit.objects[j]
    entry = {"word": obj.word, "occurrence": obj.occurrence}
    kind = region_kind(obj)
    if kind == "boxes_file":  # read here: the frames' start, stride and native size are the config's
        from .regions.objects import object_region  # torch: `import reatco` stays light
        from .video import native_frame_size

        k = next((i for i, e in enumerate(cfg.edits) if e is edit), 0)
        v = cfg.video
        entry["region"] = object_region(obj, v.n_frames, v.height, v.width, cfg.model.attention_cell_px,
                                        field=f"edits[{k}].objects[{j}]", start_frame=v.start_frame,
                                        frame_stride=v.frame_stride, native_size=native_frame_size(v.path))
    else:
        entry[kind] = getattr(obj, kind)
    return entry


def pipeline_arguments(cfg, edit=None, video=None, objects=None, source=None, prompt=None) -> dict[str, Any]:
    """Keyword arguments of `ReAtCoPipeline.__call__` for one edit of a loaded config (of
    `WanReAtCoPipeline.__call__` where the config's model is a Wan model: `model.backbone`, or auto).

    edit: an EditConfig, its name, its index, or None for the first. video: the source frames
    ((F, 3, H, W) in [-1, 1]); None reads `cfg.video` (at its size, frames and stride). The
    generator is seeded with `sampling.seed`; the output is the pipeline's default ("np" frames, `out.frames[0]`
    the clip) with the attention maps.
    objects: the edit's objects already resolved (EditObjects, as `EditRunner` has them); None:
    the config's, whatever their region kind: box, boxes and mask as dicts, a boxes file read into
    its Region for the clip's frames (start_frame, frame_stride, the video's own size), `source`
    passed on for the pipeline to find with its model in the video (under `video.prompt`). source: (source latents, inversion trajectory) to edit from instead of
    the video (the runner's cached encode and inversion); the video is then not read. prompt:
    the edit prompt's `PromptTokens` where the caller has tokenized it (the runner)."""
    import torch

    from .config import edit_config

    edit = _edit(cfg, edit)
    merged = edit_config(cfg, edit)
    if objects is None:
        objects = [_object(cfg, edit, j) for j in range(len(edit.objects))]
    if source is not None:
        given = dict(zip(("source_latents", "inversion_trajectory"), source))
    else:
        if video is None:
            from .video import read_video

            v = cfg.video
            video = read_video(v.path, v.height, v.width, v.n_frames, v.start_frame, v.frame_stride)
        given = {"video": video}
    s = merged.sampling
    from .backbones.selection import backbone_of

    if backbone_of(cfg.model) == "wan":  # WanReAtCoPipeline's call: what the Wan runner passes
        v = cfg.video
        return dict(
            prompt=edit.prompt if prompt is None else prompt, **given, objects=list(objects),
            num_inference_steps=s.steps, guidance_scale=s.guidance_scale, negative_prompt=s.negative_prompt,
            generator=torch.Generator().manual_seed(s.seed), source_prompt=cfg.inversion.prompt or v.prompt,
            inversion_fixed_point_iters=cfg.inversion.fixed_point_iters, start_in_regions=s.start_in_regions,
            rad=merged.rad, irjs=merged.irjs, window=merged.window, rad_blocks=merged.rad.blocks, n_frames=v.n_frames,
            pad_frames=v.pad_frames, height=v.height, width=v.width, return_attention=cfg.save_attention,
        )
    return dict(
        prompt=edit.prompt if prompt is None else prompt, **given, objects=list(objects), num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
        negative_prompt=s.negative_prompt, generator=torch.Generator().manual_seed(s.seed),
        inversion_prompt=cfg.inversion.prompt, source_prompt=cfg.video.prompt, start_in_regions=s.start_in_regions, rad=merged.rad, irjs=merged.irjs,
        window=merged.window, attention_cell_px=cfg.model.attention_cell_px, return_attention=cfg.save_attention,
    )


__all__ = ["pipeline_arguments"]
