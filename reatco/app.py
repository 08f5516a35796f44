"""The browser editor's page (scripts/app.py serves it): a Gradio UI over reatco.interactive.

Open a clip, draw a box per object on keyframes (interpolated in between) or name the source-prompt
word it replaces, preview the regions on every frame, run the edit, and download the outputs with
the YAML config that reruns it. Every event is one library call; gradio (and
gradio_image_annotation) are imported inside the functions, so `import reatco` never needs them.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError
from .regions.settings import InstanceChoice
from .schema import choices

MAX_OBJECTS = 3
DISPLAY = 4  # frames are shown this many times their working size (the shapes world is 64 px)
# the named instances, then the first three counted from the `order` side
INSTANCES = [*choices(InstanceChoice), "1", "2", "3"]



def build_app(cfg):
    """The Gradio Blocks UI over reatco.interactive (no editing logic here)."""
    import gradio as gr
    from gradio_image_annotation import image_annotator

    from .interactive import (EditSession, ObjectDraft, build_config, candidate_words, drafts_from_config, scale_box,
                              upscale)
    from .regions.region import interpolate_keyframes
    from .tokens import load_tokenizer, token_table

    session = EditSession(progress=True)
    tokenizer = load_tokenizer(cfg.model.pretrained)
    first = cfg.edits[0] if cfg.edits else None
    drafts0 = drafts_from_config(cfg) + [ObjectDraft() for _ in range(MAX_OBJECTS)]
    drafts0 = drafts0[:MAX_OBJECTS]
    edit_prompt0 = first.prompt if first else ""
    n_frames = cfg.video.n_frames

    def tokens_text(prompt):
        try:
            return token_table(tokenizer, prompt)
        except Exception as err:  # an over-long prompt, say: show why instead of failing the page
            return f"({err})"

    def current_config(video_path, source_prompt, edit_prompt, drafts):
        return build_config(cfg, video_path, source_prompt, edit_prompt, drafts)

    def frame_view(frames, drafts, obj, frame):
        """The frame for the annotator, with the selected object's box there (keyed or interpolated)."""
        if frames is None:
            return None
        image = upscale(frames[int(frame)], DISPLAY)
        draft = drafts[int(obj) - 1]
        boxes = []
        if draft.keyframes and not draft.source_word:
            box = interpolate_keyframes({int(k): v for k, v in draft.keyframes.items()}, len(frames))[int(frame)].tolist()
            x1, y1, x2, y2 = (round(v) for v in scale_box(box, DISPLAY))
            boxes = [{"xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2, "label": f"object {obj}"}]
        return {"image": image, "boxes": boxes}

    def keyframes_text(drafts):
        lines = []
        for j, d in enumerate(drafts, 1):
            if not d.word:
                continue
            where = f"from source word {d.source_word!r} ({d.instance})" if d.source_word else \
                "keyframes " + ", ".join(f"{k}: {[round(v) for v in b]}" for k, b in sorted(d.keyframes.items()))
            lines.append(f"object {j} — {d.word!r}: {where or 'no region yet'}")
        return "\n".join(lines)

    with gr.Blocks(title="reatco editor") as demo:
        gr.Markdown("## reatco — region-controlled video editing\nOpen a clip, give each object a word of the edited "
                    "prompt and a region (draw boxes on keyframes, or name the source word it replaces), preview, run.")
        frames_state = gr.State(None)
        drafts_state = gr.State(drafts0)
        with gr.Row():
            video_path = gr.Textbox(value=str(cfg.video.path), label="clip (file or folder of frames)", elem_id="video_path", scale=3)
            upload = gr.File(label="or upload a clip", file_types=["video", "image", ".gif"], scale=1)
            open_btn = gr.Button("Open clip", elem_id="open", scale=1)
        with gr.Row():
            source_prompt = gr.Textbox(value=cfg.video.prompt, label="source prompt", elem_id="source_prompt")
            edit_prompt = gr.Textbox(value=edit_prompt0, label="edited prompt", elem_id="edit_prompt")
        tokens = gr.Textbox(value=tokens_text(edit_prompt0), label="tokens of the edited prompt", lines=4, elem_id="tokens")
        with gr.Row():
            with gr.Column(scale=2):
                frame = gr.Slider(0, max(n_frames - 1, 1), value=0, step=1, label="frame", elem_id="frame")
                annotator = image_annotator(None, label_list=["box"], use_default_label=True, single_box=True,
                                            sources=[], elem_id="annotator", label="draw the selected object's box",
                                            show_clear_button=False)
                with gr.Row():
                    set_key = gr.Button("Set keyframe", elem_id="set_key")
                    clear_keys = gr.Button("Clear keyframes", elem_id="clear_keys")
            with gr.Column(scale=1):
                obj = gr.Radio([str(j) for j in range(1, MAX_OBJECTS + 1)], value="1", label="object", elem_id="obj")
                word = gr.Dropdown(candidate_words(edit_prompt0), value=drafts0[0].word or None, allow_custom_value=True,
                                   label="its word (edited prompt)", elem_id="word")
                mode = gr.Radio(["boxes", "source word"], value="source word" if drafts0[0].source_word else "boxes",
                                label="region from", elem_id="mode")
                source_word = gr.Dropdown(candidate_words(cfg.video.prompt), value=drafts0[0].source_word, allow_custom_value=True,
                                          label="source word it replaces", elem_id="source_word")
                instance = gr.Dropdown(INSTANCES, value=str(drafts0[0].instance), label="instance", elem_id="instance")
                summary = gr.Textbox(keyframes_text(drafts0), label="objects", lines=4, elem_id="summary")
        with gr.Row():
            preview_btn = gr.Button("Preview regions", elem_id="preview")
            run_btn = gr.Button("Run edit", variant="primary", elem_id="run")
        status = gr.Markdown("", elem_id="status")
        gallery = gr.Gallery(label="regions on every frame", columns=8, height=200, elem_id="gallery")
        result = gr.Image(label="source / edited / attention", elem_id="result", type="numpy")
        downloads = gr.File(label="outputs (the config.yaml reruns it: python scripts/edit.py --config config.yaml)",
                            file_count="multiple", elem_id="downloads")
        config_text = gr.Code(label="config.yaml (reruns this edit)", language="yaml", elem_id="config", max_lines=12)

        # ------------------------------------------------------------------ events (each a library call)

        def on_open(path, uploaded, src_prompt, e_prompt, drafts):
            path = uploaded or path
            try:
                frames = session.frames(current_config(path, src_prompt, e_prompt, []))
            except ConfigError as err:
                return None, gr.update(), gr.update(), f"error: {err}", path
            return (frames, gr.update(maximum=len(frames) - 1, value=0), frame_view(frames, drafts, "1", 0),
                    f"opened {path}: {len(frames)} frames", path)

        open_btn.click(on_open, [video_path, upload, source_prompt, edit_prompt, drafts_state],
                       [frames_state, frame, annotator, status, video_path])
        edit_prompt.change(lambda p: (tokens_text(p), gr.update(choices=candidate_words(p))), edit_prompt, [tokens, word])
        source_prompt.change(lambda p: gr.update(choices=candidate_words(p)), source_prompt, source_word)
        frame.change(frame_view, [frames_state, drafts_state, obj, frame], annotator)

        def on_object(drafts, j, frames, f):
            d = drafts[int(j) - 1]
            return (gr.update(value=d.word or None), "source word" if d.source_word else "boxes", gr.update(value=d.source_word),
                    str(d.instance), frame_view(frames, drafts, j, f))

        obj.change(on_object, [drafts_state, obj, frames_state, frame], [word, mode, source_word, instance, annotator])

        def on_fields(drafts, j, w, m, sw, inst, frames, f):
            d = drafts[int(j) - 1]
            d.word = w or ""
            d.source_word = sw if m == "source word" and sw else None
            d.instance = int(inst) if str(inst).isdigit() else inst
            return drafts, keyframes_text(drafts), frame_view(frames, drafts, j, f)

        for component in (word, mode, source_word, instance):
            component.change(on_fields, [drafts_state, obj, word, mode, source_word, instance, frames_state, frame],
                             [drafts_state, summary, annotator])

        def on_set_key(drafts, j, f, value):
            boxes = (value or {}).get("boxes") or []
            if not boxes:
                return drafts, keyframes_text(drafts), "error: draw a box first"
            b = boxes[-1]
            box = scale_box([b["xmin"], b["ymin"], b["xmax"], b["ymax"]], 1 / DISPLAY)
            d = drafts[int(j) - 1]
            d.keyframes[int(f)] = [round(v, 1) for v in box]
            d.source_word = None
            return drafts, keyframes_text(drafts), f"object {j}: keyframe {int(f)} = {d.keyframes[int(f)]}"

        set_key.click(on_set_key, [drafts_state, obj, frame, annotator], [drafts_state, summary, status])

        def on_clear(drafts, j, frames, f):
            drafts[int(j) - 1].keyframes = {}
            return drafts, keyframes_text(drafts), frame_view(frames, drafts, j, f)

        clear_keys.click(on_clear, [drafts_state, obj, frames_state, frame], [drafts_state, summary, annotator])

        def on_preview(path, src_prompt, e_prompt, drafts):
            try:
                images = session.preview(current_config(path, src_prompt, e_prompt, drafts))
            except ConfigError as err:
                return gr.update(), f"error: {err}"
            return images, "regions on every frame (regions from source words are found with the model)"

        preview_btn.click(on_preview, [video_path, source_prompt, edit_prompt, drafts_state], [gallery, status])

        def on_run(path, src_prompt, e_prompt, drafts, progress=gr.Progress(track_tqdm=True)):
            try:
                run_cfg = current_config(path, src_prompt, e_prompt, drafts)
                progress(0, desc="tuning / inverting (cached) and editing")
                out = session.run(run_cfg)
            except ConfigError as err:
                return gr.update(), gr.update(), gr.update(), f"error: {err}"
            yaml_text = (Path(out["out_dir"]) / "config.yaml").read_text()
            return out["strip"], out["files"], yaml_text, f"done: outputs in {out['out_dir']}"

        run_btn.click(on_run, [video_path, source_prompt, edit_prompt, drafts_state], [result, downloads, config_text, status])
    return demo


def launch(cfg, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve build_app(cfg) until interrupted: offline (no share link) and with system fonts only."""
    import gradio as gr

    demo = build_app(cfg)
    demo.queue().launch(server_name=host, server_port=port, share=False, show_error=True,
                        theme=gr.themes.Base(font=["sans-serif"], font_mono=["monospace"]))
