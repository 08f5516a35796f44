"""The shapes-world Wan model's training (reatco.toy.wan_training, scripts/train_shapes_model.py
--backbone wan): its pieces, and that every stage resumed from a checkpoint ends exactly where an
uninterrupted run does. Tiny configs, so it takes seconds."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from reatco.toy import wan_model as wm
from reatco.toy import wan_training as wt
from scripts_loader import load_script

TINY_VAE = json.dumps(dict(base_dim=4, dim_mult=[1, 1, 1]))
TINY_TRANSFORMER = json.dumps(dict(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=4, freq_dim=32))


def tiny_settings(work, **kw):
    base = dict(work=str(work), out=str(Path(work) / "export"), progress=False, vae_config=TINY_VAE,
                transformer_config=TINY_TRANSFORMER, vae_steps=4, vae_warmup=2, vae_batch=2, vae_pool=6, vae_crop=16,
                vae_eval_every=4, vae_eval_clips=2, n_clips=6, n_long_clips=3, steps=4, warmup=2, batch=3,
                long_every=2, export_every=0, decoder_steps=4, decoder_warmup=2, decoder_batch=2, decoder_eval_every=4,
                resume=True)
    base.update(kw)
    return wt.WanTrainSettings(**base)


def run(stage, settings):
    return wt.STAGES[stage](settings)


def states_equal(a: dict, b: dict, path=""):
    """Tensors equal bit for bit, everything else equal, through nested dicts and lists."""
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            states_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            states_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and path.endswith("wall_s"):
        pass  # wall-clock time is the only thing allowed to differ
    else:
        assert a == b, path


def checkpoint(path):
    s = torch.load(path, weights_only=False)
    s.pop("torch_rng")
    return s


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two work folders: one trained straight through (VAE, data, transformer: 4 steps each), one
    in halves (2 steps, stop, resume, 2 steps)."""
    root = tmp_path_factory.mktemp("wan")
    straight, halves = root / "straight", root / "halves"
    assert run("all", tiny_settings(straight, resume=False))
    assert not run("vae", tiny_settings(halves, resume=False, stop_after=2))
    assert run("vae", tiny_settings(halves, stop_after=2))
    assert run("data", tiny_settings(halves))
    assert not run("transformer", tiny_settings(halves, stop_after=2))
    assert run("transformer", tiny_settings(halves, stop_after=2))
    assert not run("decoder", tiny_settings(halves, stop_after=2))
    assert run("decoder", tiny_settings(halves, stop_after=2))
    return straight, halves


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(trained):
    straight, halves = trained
    for name in ("vae.pt", "transformer.pt", "decoder.pt"):
        a, b = checkpoint(straight / name), checkpoint(halves / name)
        assert a["state"]["step"] == 4 and a["state"]["done"]
        states_equal(a, b)  # model, EMA, optimizer moments, loss history: bit for bit
    a, b = (torch.load(next(p.glob("wan_data_*.pt")), weights_only=False) for p in (straight, halves))
    states_equal(a, b)
    # and the run moved: the weights are not the seeded initialisation
    torch.manual_seed(0)
    wm.build_text_encoder(wm.build_tokenizer())
    init = wm.build_transformer({**wm.TRANSFORMER_CONFIG, **json.loads(TINY_TRANSFORMER)}).state_dict()
    s = checkpoint(straight / "transformer.pt")
    assert not torch.equal(s["transformer"]["proj_out.weight"], init["proj_out.weight"])


def test_an_interrupted_data_stage_resumes_to_the_same_set(trained, tmp_path):
    straight, _ = trained
    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(straight / "vae.pt", work / "vae.pt")
    settings = tiny_settings(work, n_clips=40)  # two chunks of 32
    wt.STOP.append("test")  # a SIGTERM during the first chunk
    try:
        assert not run("data", settings)
    finally:
        wt.STOP.clear()
    partial = torch.load(next(work.glob("*.partial.pt")), weights_only=False)
    assert partial["short"]["filled"] == 32
    assert run("data", settings)
    resumed = torch.load(wt._data_path(settings), weights_only=False)
    other = tmp_path / "o"
    other.mkdir()
    shutil.copy(straight / "vae.pt", other / "vae.pt")
    assert run("data", tiny_settings(other, n_clips=40))
    states_equal(resumed, torch.load(wt._data_path(tiny_settings(other, n_clips=40)), weights_only=False))


def test_the_data_names_each_object_word_and_its_cells(trained):
    straight, _ = trained
    d = torch.load(next(straight.glob("wan_data_*.pt")), weights_only=False)
    tok = wm.build_tokenizer()
    for name, n_frames, offset in (("short", 9, 0), ("long", 17, 10_000_000)):
        s = d[name]
        assert s["moments"].shape[1:] == (32, wm.n_latent_frames(n_frames), wm.LATENT, wm.LATENT)
        for i in range(len(s["ids"])):
            clip = wm.make_clip(0, offset + i, n_frames)
            words = tok.convert_ids_to_tokens(s["ids"][i][s["mask"][i].bool()].tolist())
            assert " ".join(words[:-1]).replace(" ,", ",") == clip.caption and words[-1] == wm.EOS
            for j, sh in enumerate(clip.shapes):
                assert [words[k] for k in s["obj_tok"][i, j]] == [sh.color, sh.shape]
                assert np.allclose(s["cover"][i, j].float().numpy(), wm.cell_coverage(clip.masks, n_frames)[j], atol=1e-3)
            assert (s["obj_tok"][i, len(clip.shapes):] == -1).all()
    assert len(d["latents_mean"]) == len(d["latents_std"]) == 16 and min(d["latents_std"]) > 0


def test_the_export_loads_as_a_wan_checkpoint_and_samples(trained, tmp_path):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    straight, _ = trained
    out = wt.export(tiny_settings(straight, out=str(tmp_path / "model")))
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "WanPipeline"
    pipe = WanPipeline.from_pretrained(out)
    assert isinstance(pipe.vae, AutoencoderKLWan) and isinstance(pipe.transformer, WanTransformer3DModel)
    assert isinstance(pipe.text_encoder, UMT5EncoderModel) and isinstance(pipe.scheduler, UniPCMultistepScheduler)
    assert AutoTokenizer.from_pretrained(out / "tokenizer")("a red circle").input_ids == pipe.tokenizer("a red circle").input_ids
    # the EMA weights, and the latents' statistics from the data set
    s = torch.load(straight / "transformer.pt", weights_only=False)
    assert torch.equal(pipe.transformer.state_dict()["proj_out.weight"], s["ema_transformer"]["proj_out.weight"])
    d = torch.load(next(straight.glob("wan_data_*.pt")), weights_only=False)
    assert pipe.vae.config.latents_std == pytest.approx(d["latents_std"])
    info = json.loads((out / "training.json").read_text())
    assert info["transformer_steps"] == 4 and info["vae_steps"] == 4 and info["attention_blocks"] == [2, 3]
    assert info["configs"]["transformer"]["num_layers"] == 4 and info["loss_curve"] == s["state"]["curve"]
    pipe.set_progress_bar_config(disable=True)
    video = pipe("a red circle on a gray background", height=64, width=64, num_frames=9, num_inference_steps=2,
                 guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="np").frames
    assert video.shape == (1, 9, 64, 64, 3) and np.isfinite(video).all()
    # the eval reads an exported folder as it reads the checkpoints it came from
    kw = dict(eval_clips=2, eval_samples=2, eval_steps=2, eval_attention_clips=2)
    from_folder = wt.evaluate(tiny_settings(tmp_path / "e1", eval_model=str(out), **kw))
    copy = tmp_path / "e2"
    shutil.copytree(straight, copy)
    from_checkpoints = wt.evaluate(tiny_settings(copy, **kw))
    for gate in ("vae", "attention", "text2video"):
        for k, v in from_checkpoints[gate].items():
            if isinstance(v, float):
                assert from_folder[gate][k] == pytest.approx(v, abs=1e-4), (gate, k)


def test_an_existing_checkpoint_is_never_overwritten_without_resume(trained, tmp_path, capsys):
    straight, _ = trained
    work = tmp_path / "w"
    shutil.copytree(straight, work)
    before = (work / "vae.pt").read_bytes()
    script = load_script("train_shapes_model")
    threads = torch.get_num_threads()
    try:
        code = script.main(["--backbone", "wan", "--stage", "vae", "--work", str(work), "--vae_config", TINY_VAE,
                            "--threads", str(threads)])
        assert code == 2 and "resume:" in capsys.readouterr().err
        code = script.main(["--backbone", "wan", "--stage", "vae", "--work", str(tmp_path / "new"), "--vae_frames", "4",
                            "--threads", str(threads)])
        assert code == 2 and "vae_frames: must be 4k + 1" in capsys.readouterr().err
        code = script.main(["--backbone", "wan", "--stage", "vae", "--work", str(tmp_path / "new2"), "--vae_config", "[1]",
                            "--threads", str(threads)])
        assert code == 2 and "vae_config:" in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
    assert (work / "vae.pt").read_bytes() == before
    assert "--stage vae" in (work / "commands.log").read_text()


# ----------------------------------------------------------------------------- the pieces

def test_the_tokenizer_is_word_level_t5_style_and_loads_offline(tmp_path):
    from transformers import AutoTokenizer

    tok = wm.build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    caption = "a red circle, a blue square and a green triangle on a dotted background"
    for t in (tok, loaded):
        ids = t(caption).input_ids
        words = t.convert_ids_to_tokens(ids)
        assert words == caption.replace(",", " ,").split() + [wm.EOS]  # one token a word, </s> last
        assert len(ids) == wm.TEXT_TOKENS
        assert t("a Purple circle").input_ids == [t.convert_tokens_to_ids("a"), t.unk_token_id,
                                                 t.convert_tokens_to_ids("circle"), t.eos_token_id]
        assert t.pad_token_id == 0 and t.eos_token_id == 1
    assert wm.word_positions(tok, caption)["green"] == 9


def test_clips_are_drawn_again_where_no_paths_fit():
    from reatco.toy import world

    index = next(i for i in range(200) if _fails(lambda: world.make_video(2_000_000, 20_000 + i, n_frames=9, n_objects=2)))
    clip = wm.make_clip(2_000_000, 20_000 + index, 9, n_objects=2)  # the eval's attention clips
    assert len(clip.shapes) == 2 and clip.frames.shape == (9, 64, 64, 3)
    again = wm.make_clip(2_000_000, 20_000 + index, 9, n_objects=2)
    assert np.array_equal(clip.frames, again.frames)  # still a function of (seed, index)
    assert np.array_equal(world.make_video(2_000_000, 20_000 + index + 10 ** 9, n_frames=9, n_objects=2).frames, clip.frames)


def _fails(make) -> bool:
    try:
        make()
    except ValueError:
        return True
    return False


def test_latent_frames_cover_their_pixel_frames_and_cells():
    assert wm.latent_frame_groups(9) == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert len(wm.latent_frame_groups(17)) == 5 and wm.latent_frame_groups(17)[-1] == [13, 14, 15, 16]
    with pytest.raises(ValueError, match="4k \\+ 1"):
        wm.n_latent_frames(8)
    masks = np.zeros((1, 5, 64, 64), bool)
    masks[0, 0, 0:8, 0:4] = True  # frame 0: half of cell (0, 0)
    masks[0, 3, 8:16, 8:16] = True  # frame 3 (latent frame 1): all of cell (1, 1)
    cov = wm.cell_coverage(masks, 5)
    assert cov.shape == (1, 2, 8, 8)
    assert cov[0, 0, 0, 0] == 0.5 and cov[0, 0].sum() == 0.5
    assert cov[0, 1, 1, 1] == 1.0 and cov[0, 1].sum() == 1.0
    boxes = np.zeros((1, 5, 4), int)
    boxes[0, :] = [0, 0, 4, 8]
    boxes[0, 4] = [60, 60, 64, 64]
    bc = wm.box_coverage(boxes, 5)
    assert bc[0, 0, 0, 0] == 0.5 and bc[0, 1, 7, 7] == 0.25 and bc[0, 1, 0, 0] == 0.5  # the union over frames 1–4


def test_the_recorder_is_wan_attention_and_hands_out_its_maps():
    torch.manual_seed(0)
    tr = wm.build_transformer({**wm.TRANSFORMER_CONFIG, **json.loads(TINY_TRANSFORMER)}).eval()
    x, text = torch.randn(2, 16, 3, wm.LATENT, wm.LATENT), torch.randn(2, 20, 64)
    t = torch.tensor([300.0, 700.0])
    with torch.no_grad():
        reference = tr(hidden_states=x, timestep=t, encoder_hidden_states=text).sample
        store = []
        old = wm.install_recorders(tr, [1, 3], store)
        recorded = tr(hidden_states=x, timestep=t, encoder_hidden_states=text).sample
    assert torch.allclose(recorded, reference, atol=1e-5)
    assert len(store) == 2 and store[0].shape == (2, 3 * 8 * 8, 20)
    assert torch.allclose(store[0].sum(-1), torch.ones(2, 192), atol=1e-5)
    tr.set_attn_processor(old)
    with pytest.raises(ValueError, match="blocks.7.attn2"):
        wm.install_recorders(tr, [7], [])


def test_the_attention_losses_reward_words_on_their_object():
    t, n, length = 2, 2 * 64, 8
    cover = torch.zeros(1, 3, t, 8, 8)
    cover[0, 0, :, 2:4, 2:4] = 1.0  # the object: 4 cells a frame
    obj_tok = torch.full((1, 3, 2), -1)
    obj_tok[0, 0] = torch.tensor([1, 2])
    mask = torch.zeros(1, 6, dtype=torch.long)
    mask[0, :5] = 1  # four words and </s>
    on = cover[0, 0].flatten() > 0
    maps = torch.full((1, n, length), 1e-9)
    maps[0, on, 1] = maps[0, on, 2] = 0.5  # the words attend only on their object's cells …
    maps[0, ~on, 0] = 1.0  # … and another word everywhere else
    keep = torch.tensor([True])
    spatial, share = wt.attention_losses(maps, mask, obj_tok, cover, keep)
    assert spatial == pytest.approx(0, abs=1e-6) and share == pytest.approx(0, abs=1e-6)
    uniform = torch.full((1, n, length), 1 / length)
    spatial, share = wt.attention_losses(uniform, mask, obj_tok, cover, keep)
    assert spatial == pytest.approx(1 - 4 / 64) and share == pytest.approx(1 - 2 / 4)  # 2 of the 4 words
    spatial, share = wt.attention_losses(uniform, mask, obj_tok, cover, torch.tensor([False]))  # caption dropped
    assert spatial == 0 and share == 0
    # the same raw probability of the words everywhere, but the padding (position 7) takes most of
    # it off the object: renormalised over the real tokens, the words look off the object
    maps = torch.full((1, n, length), 0.01)
    maps[0, ~on, 7] = 1 - 0.07
    maps[0, on, 4] = 1 - 0.07  # </s> instead on the object
    spatial, _ = wt.attention_losses(maps, mask, obj_tok, cover, keep)
    real_off = 0.01 / 0.05  # a word's renormalised probability off the object; on it 0.01 / 0.97
    per_cell_on = 0.01 / 0.97
    expected = 1 - 4 * per_cell_on / (4 * per_cell_on + 60 * real_off)
    assert spatial == pytest.approx(expected, rel=1e-6) and spatial > 0.99


def test_the_vae_trains_on_its_decode_without_the_clamp():
    torch.manual_seed(0)
    vae = wm.build_vae({**wm.VAE_CONFIG, **json.loads(TINY_VAE)})
    with torch.no_grad():
        vae.decoder.conv_out.bias += 2.0  # outputs beyond 1, as a fresh decoder's often are
        z = torch.randn(2, 16, 3, wm.LATENT, wm.LATENT)
        raw, clamped = wt.decode_unclamped(vae, z), vae.decode(z).sample
    assert raw.shape == clamped.shape == (2, 3, 9, 64, 64)
    assert torch.equal(raw.clamp(-1, 1), clamped) and raw.max() > 1.5


def test_each_step_draws_from_its_own_generator():
    a = torch.rand(3, generator=wt.step_generator(0, "vae", 5))
    assert torch.equal(a, torch.rand(3, generator=wt.step_generator(0, "vae", 5)))
    assert not torch.equal(a, torch.rand(3, generator=wt.step_generator(0, "vae", 6)))
    assert not torch.equal(a, torch.rand(3, generator=wt.step_generator(0, "transformer", 5)))
    assert wt.cosine_lr(0, 100, 1.0, 0.0, 10) == pytest.approx(0.1)
    assert wt.cosine_lr(10, 100, 1.0, 0.0, 10) == pytest.approx(1.0)
    assert wt.cosine_lr(100, 100, 1.0, 0.1, 10) == pytest.approx(0.1)


def test_the_eval_reads_the_three_gates_from_a_checkpoint(trained, tmp_path):
    straight, _ = trained
    work = tmp_path / "w"
    shutil.copytree(straight, work)
    out = wt.evaluate(tiny_settings(work, eval_clips=2, eval_samples=2, eval_steps=2, eval_attention_clips=2))
    # the reading names the fine-tuned decoder it decoded with
    assert out["transformer_step"] == 4 and out["decoder_step"] == 4
    assert json.loads((work / "eval-step4-decoder4-seed0.json").read_text()) == out
    assert 0 < out["vae"]["psnr_mean"] < 60 and out["vae"]["gate"] == 30.0
    assert 0 <= out["text2video"]["accuracy"] <= 1 and out["text2video"]["n"] == 2 and out["text2video"]["frames"] == 9
    att = out["attention"]
    assert att["sigma"] == 0.5 and att["blocks"] == [2, 3] and set(att["per_sigma"]) == {"0.25", "0.5", "0.75"}
    assert 0 < att["box_share"] < 0.5 and 0 <= att["mass_in_box"] <= 1 and 0 <= att["raw_mass_in_box"] <= 1


def test_before_the_transformer_the_eval_reads_the_vae_alone(trained, tmp_path):
    straight, _ = trained
    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(straight / "vae.pt", work / "vae.pt")
    out = wt.evaluate(tiny_settings(work, eval_clips=2))
    assert out["vae_step"] == 4 and out["transformer_step"] is None and "text2video" not in out
    vae, _ = wt.load_vae(work)
    clips = wm.clip_tensor([wm.make_clip(2_000_000, i, 9) for i in range(2)])  # the bench's held-out seeds
    assert out["vae"]["psnr_mean"] == pytest.approx(float(wt.vae_psnr(vae, clips).mean()))
    assert json.loads((work / "eval-vae-step4-seed0.json").read_text()) == out
    # another held-out seed is another file: the first reading stays
    other = wt.evaluate(tiny_settings(work, eval_clips=2, seed=1))
    assert json.loads((work / "eval-vae-step4-seed1.json").read_text()) == other != out
    assert json.loads((work / "eval-vae-step4-seed0.json").read_text()) == out


def test_a_word_map_on_its_box_has_all_its_mass_there():
    cover = torch.zeros(2, 8, 8)
    cover[:, 1:3, 1:3] = 1.0
    cover[1, 3, 1:3] = 0.5  # half-covered cells count half
    maps = torch.rand(128, 6) * 1e-3
    maps[:, 4] = 0
    maps[cover.flatten() == 1.0, 4] = 1.0
    assert torch.allclose(wm.word_box_mass(maps, 4, cover), torch.ones(2))
    maps[:, 4] = 1.0  # uniform: the box's share of the frame
    assert torch.allclose(wm.word_box_mass(maps, 4, cover), torch.tensor([4 / 64, 5 / 64]))


def test_the_shipped_configs_fit_the_25_mb_budget_in_fp32():
    tok = wm.build_tokenizer()
    models = (wm.build_vae(), wm.build_transformer(), wm.build_text_encoder(tok))
    n = sum(p.numel() for m in models for p in m.parameters())
    assert n * 4 < 20e6  # fp32 safetensors, with room for the configs and the tokenizer
    assert list(models[1].config.patch_size) == [1, wm.PATCH, wm.PATCH]
    assert models[0].config.scale_factor_spatial == wm.SPATIAL and models[0].config.scale_factor_temporal == wm.TEMPORAL
    # the token grid the regions and the attention loss live on: 8 px a token, 8 × 8 tokens a frame
    z = models[0].encode(torch.zeros(1, 3, 9, wm.SIZE, wm.SIZE)).latent_dist.mode()
    assert z.shape == (1, 16, 3, wm.LATENT, wm.LATENT)
    tokens = models[1].patch_embedding(z)
    assert tokens.shape[-3:] == (3, wm.GRID, wm.GRID) and wm.SIZE // wm.GRID == wm.TOKEN_PX == 8


def test_a_short_padding_with_its_logit_bias_is_the_pipelines_512_padding():
    torch.manual_seed(0)
    tr = wm.build_transformer({**wm.TRANSFORMER_CONFIG, **json.loads(TINY_TRANSFORMER)}).eval()
    tok = wm.build_tokenizer()
    text = wm.build_text_encoder(tok).eval()
    enc = tok(["a red circle on a gray background", "a blue square, a red circle and a green triangle on a dotted background"],
              padding="max_length", max_length=wm.TEXT_TOKENS, return_tensors="pt")
    x, t = torch.randn(2, 16, 3, wm.LATENT, wm.LATENT), torch.tensor([250.0, 800.0])
    with torch.no_grad():
        full_store = []
        old = wm.install_recorders(tr, [2], full_store)
        full = tr(hidden_states=x, timestep=t, encoder_hidden_states=wm.encode_text(text, enc.input_ids, enc.attention_mask)).sample
        tr.set_attn_processor(old)
        plain = tr(hidden_states=x, timestep=t, encoder_hidden_states=wm.encode_text(text, enc.input_ids, enc.attention_mask)).sample
        short_store, padding = [], wm.PaddingBias()
        wm.install_recorders(tr, [2], short_store, padding)
        padding.set(enc.attention_mask, wm.TEXT_TOKENS + 1)
        short = tr(hidden_states=x, timestep=t,
                   encoder_hidden_states=wm.encode_text(text, enc.input_ids, enc.attention_mask, wm.TEXT_TOKENS + 1)).sample
        padding.bias = None  # without the bias, the short padding is another model
        unbiased = tr(hidden_states=x, timestep=t,
                      encoder_hidden_states=wm.encode_text(text, enc.input_ids, enc.attention_mask, wm.TEXT_TOKENS + 1)).sample
    assert torch.allclose(full, plain, atol=1e-5) and torch.allclose(short, full, atol=1e-5)
    assert not torch.allclose(unbiased, full, atol=1e-3)
    n_real = enc.attention_mask.sum(1)
    for b in range(2):  # the real tokens' maps are the full padding's
        assert torch.allclose(short_store[0][b, :, :n_real[b]], full_store[0][b, :, :n_real[b]], atol=1e-6)
    with pytest.raises(ValueError, match="at least one padding"):
        padding.set(torch.ones(1, 5), 5)


def test_the_shapes_bench_measures_the_wan_export_like_the_unet_model(trained, tmp_path, capsys):
    """scripts/bench_shapes.py on a Wan-layout folder: the model's gates (wan_eval's) and the editing
    cases of the UNet model's bench, on 4k + 1 frames, with the temporal scores; --compare puts
    the editing sections side by side."""
    straight, _ = trained
    model = wt.export(tiny_settings(straight, out=str(tmp_path / "model")))
    bench = load_script("bench_shapes")
    threads = torch.get_num_threads()
    out = tmp_path / "wan.json"
    with pytest.raises(SystemExit) as err:  # 8 frames is not 4k + 1: refused before the model loads
        bench.main(["--model", str(model), "--sections", "editing", "--edit_frames", "8", "--out", str(out)])
    assert err.value.code == 2 and "edit_frames" in capsys.readouterr().err and not out.exists()
    try:
        report = bench.main([
            "--model", str(model), "--threads", str(threads),
            "--n_vae", "2", "--n", "2", "--n_attn", "2", "--steps", "2", "--batch", "2", "--edit_cases", "1", "--sections",
            "vae,text2image,attention,editing,regions",
            "--edit_frames", "5", "--set", "sampling.steps=3", "--set", "rad.max_update_steps=2",
            "--set", "rad.refinement_thresholds={}", "--set", "irjs.decode_outside=source",
            "--set", "rad.blocks=[2,3]", "--out", str(out)])  # the tiny model has 4 blocks, the config reads [3, 4] of 6
    finally:
        torch.set_num_threads(threads)
    assert report["backbone"] == "wan" and json.loads(out.read_text())["backbone"] == "wan"
    assert report["vae"]["n"] == 2 and report["text2image"]["frames"] == 9 and report["attention"]["blocks"] == [2, 3]
    edit = report["editing"]
    assert edit["backbone"] == "wan" and edit["n_frames"] == 5 and edit["box_grid"] == wm.SPATIAL
    irjs, no_irjs = edit["rad_irjs"], edit["no_irjs"]
    # IRJS keeps the source's latents outside the regions' cells, and decode_outside: source their decode: in
    # the cells it keeps, the edit is exactly the source's own VAE round trip; the cells a latent frame's
    # union of boxes takes from the pixel frames' invariant region (the moving objects) are left to the model
    assert irjs["kept_cells_psnr"] == edit["vae_roundtrip_kept_cells_psnr"] < 40
    assert 0 < irjs["cut_cells_share"] == no_irjs["cut_cells_share"] < 0.3
    assert no_irjs["kept_cells_psnr"] != irjs["kept_cells_psnr"]  # (a 4-step VAE decodes everything alike)
    assert irjs["source_region_change"] > 0 and irjs["cpu_seconds"] > 0
    assert 0 <= irjs["attention_in_regions"] <= 1 and 0 <= irjs["flicker"] <= 1
    # regions found by the DiT's own attn2 on the source clip, then the same edit with found and true regions
    regions = report["regions"]
    assert regions["backbone"] == "wan" and regions["n_frames"] == 5 and 0 <= regions["iou"] <= 1
    assert {"placement", "invariant_psnr"} <= set(regions["found_regions"]) and len(regions["cases"][0]["found_boxes"]) == 2
    table = capsys.readouterr().out
    assert "text→video colours+shapes right, per frame" in table and "attn2 mass in box (blocks [2, 3]), σ=0.5" in table
    # the backbone comparison reads the two results files; a file without an editing section is refused
    unet = tmp_path / "unet.json"
    unet.write_text(json.dumps({"backbone": "unet", "editing": {**edit, "backbone": "unet"}}))
    bench.main(["--compare", str(unet), str(out)])
    compared = capsys.readouterr().out
    assert "| RAD+IRJS, on the same held-out cases | unet (unet.json) | wan (wan.json) |" in compared
    assert f"| placement, RAD+IRJS | {irjs['placement']:.2f} | {irjs['placement']:.2f} |" in compared
    # one family's rows of each run (a run over several families against one over base alone)
    only_base = {**edit["families"]["base"], "rad_irjs": {**edit["families"]["base"]["rad_irjs"], "placement": 0.125}}
    unet.write_text(json.dumps({"backbone": "unet", "editing": {**edit, "families": {"base": only_base}}}))
    bench.main(["--compare", str(unet), str(out), "--families", "base"])
    compared = capsys.readouterr().out
    assert f"| placement, RAD+IRJS | 0.12 | {edit['families']['base']['rad_irjs']['placement']:.2f} |" in compared
    for families, said in (("cross", "no 'cross' family"), ("base,cross", "one family")):
        with pytest.raises(SystemExit) as err:
            bench.main(["--compare", str(unet), str(out), "--families", families])
        assert err.value.code == 2 and said in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"vae": {}}))
    with pytest.raises(SystemExit) as err:
        bench.main(["--compare", str(tmp_path / "bad.json"), str(out)])
    assert err.value.code == 2 and "bad.json" in capsys.readouterr().err


def test_the_decoder_fine_tuning_keeps_the_encoder_and_moves_the_decoder(trained):
    straight, _ = trained
    vae_ck, dec = checkpoint(straight / "vae.pt"), checkpoint(straight / "decoder.pt")
    assert dec["state"]["vae_step"] == vae_ck["state"]["step"] == 4 and dec["state"]["done"]
    for key, value in vae_ck["ema"].items():  # the VAE's EMA is where the fine-tuning starts
        tuned, tuned_ema = dec["model"][key], dec["ema"][key]
        if key.startswith(("encoder.", "quant_conv.")):  # frozen: the latents, the data set and the transformer stay valid
            assert torch.equal(tuned, value) and torch.equal(tuned_ema, value), key
    moved = [k for k in vae_ck["ema"] if k.startswith("decoder.") and not torch.equal(dec["model"][k], vae_ck["ema"][k])]
    assert moved, "the decoder did not train"
    history = dec["state"]["history"]
    assert [h["step"] for h in history] == [0, 4] and all(np.isfinite(h["joined_psnr"]) for h in history)
    # the loaders hand out the fine-tuned decoder, the data stage the VAE's own (the same encoder)
    tuned_vae, ck = wt.load_vae(straight)
    assert ck["decoder_state"]["step"] == 4
    assert torch.equal(tuned_vae.state_dict()["decoder.conv_out.weight"], dec["ema"]["decoder.conv_out.weight"])
    plain_vae, ck = wt.load_vae(straight, decoder=False)
    assert "decoder_state" not in ck
    assert torch.equal(plain_vae.state_dict()["decoder.conv_out.weight"], vae_ck["ema"]["decoder.conv_out.weight"])


def test_joined_latents_are_decoded_into_the_same_join_of_the_pixels():
    gen = torch.Generator().manual_seed(3)
    m = wt.moving_rectangles(5, 3, 12, gen)
    assert m.shape == (5, 1, 3, 12, 12) and set(m.unique().tolist()) == {0.0, 1.0}
    for i in range(5):  # one rectangle a latent frame, of one size, moving by at most 2 cells
        boxes = []
        for f in range(3):
            ys, xs = torch.nonzero(m[i, 0, f], as_tuple=True)
            boxes.append((ys.min().item(), xs.min().item(), ys.max().item(), xs.max().item()))
            assert m[i, 0, f].sum() == (boxes[-1][2] - boxes[-1][0] + 1) * (boxes[-1][3] - boxes[-1][1] + 1)
        for a, b in zip(boxes, boxes[1:]):
            assert b[2] - b[0] == a[2] - a[0] and abs(b[0] - a[0]) <= 2 and abs(b[1] - a[1]) <= 2
    p = wt.pixel_mask(m, 9)
    assert p.shape == (5, 1, 9, 48, 48)
    for frame, latent in enumerate([0, 1, 1, 1, 1, 2, 2, 2, 2]):  # Wan's causal chunks: 1 + 4 + 4
        assert torch.equal(p[:, :, frame, ::4, ::4], m[:, :, latent])
    x, z = torch.randn(3, 3, 9, 48, 48), torch.randn(3, 16, 3, 12, 12)
    xj, zj = wt.join_clips(x, z, 2, torch.Generator().manual_seed(3))
    mj = wt.moving_rectangles(2, 3, 12, torch.Generator().manual_seed(3))
    pj = wt.pixel_mask(mj, 9)
    assert torch.equal(zj[:2], mj * z[1:3] + (1 - mj) * z[:2]) and torch.equal(xj[:2], pj * x[1:3] + (1 - pj) * x[:2])
    assert torch.equal(zj[2:], z[2:]) and torch.equal(xj[2:], x[2:])  # the rest of the batch as it was


def test_the_decoder_stage_starts_only_from_a_finished_vae(trained, tmp_path):
    from reatco.errors import ConfigError

    straight, _ = trained
    with pytest.raises(ConfigError, match="vae.pt is missing"):
        run("decoder", tiny_settings(tmp_path / "empty"))
    work = tmp_path / "half"
    assert not run("vae", tiny_settings(work, resume=False, stop_after=2))
    with pytest.raises(ConfigError, match="not finished"):
        run("decoder", tiny_settings(work))
