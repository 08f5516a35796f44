"""Each metric against an independent computation on tiny random models saved by the test."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from reatco.metrics import (
    Detection,
    clear_cache,
    frame_consistency,
    invariant_mask,
    load_lpips,
    load_owlvit,
    lpips_distance,
    masked_psnr,
    parse_relation,
    pickscore,
    relation_from_centres,
    relation_from_masks,
    text_alignment,
    to_pil_frames,
    visor,
    visor_scores,
)
from reatco.metrics.visor import relation_holds, score_frame

from tiny_models import save_tiny_clip, save_tiny_owlvit

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision's deprecated `pretrained` in lpips


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    clear_cache()
    yield {"clip": str(save_tiny_clip(root / "clip")), "owlvit": str(save_tiny_owlvit(root / "owlvit"))}
    clear_cache()


@pytest.fixture(scope="module")
def frames():
    return np.random.RandomState(0).randint(0, 256, (4, 40, 56, 3), dtype=np.uint8)


def _clip_embeddings(folder, images, prompt):
    """CLIP by hand: vision/text towers + projections, unit vectors, logit scale."""
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        pixels = proc.image_processor(images, return_tensors="pt").pixel_values
        img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output).double().numpy()
        ids = proc.tokenizer([prompt], return_tensors="pt", padding=True)
        txt = model.text_projection(model.text_model(**ids).pooler_output).double().numpy()
        scale = float(model.logit_scale.exp())
    return img, txt, scale


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_text_alignment_is_mean_clip_logit_at_480(models, frames):
    prompt = "a red fox jumping over a fence"
    resized = [Image.fromarray(f).resize((480, 480)) for f in frames]
    img, txt, scale = _clip_embeddings(models["clip"], resized, prompt)
    expected = float(np.mean(scale * _unit(img) @ _unit(txt)[0]))
    assert text_alignment(frames, prompt, model=models["clip"]) == pytest.approx(expected, abs=1e-4)


def test_frame_consistency_mean_over_ordered_pairs(models, frames):
    resized = [Image.fromarray(f).resize((480, 480)) for f in frames]
    img, _, _ = _clip_embeddings(models["clip"], resized, "x")
    u = _unit(img)
    pairs = [float(u[i] @ u[j]) for i in range(len(u)) for j in range(len(u)) if i != j]
    assert frame_consistency(frames, model=models["clip"]) == pytest.approx(np.mean(pairs), abs=1e-5)
    same = np.repeat(frames[:1], 3, axis=0)
    assert frame_consistency(same, model=models["clip"]) == pytest.approx(1.0, abs=1e-6)


def test_keep_aspect_skips_the_480_resize(models, frames):
    img, _, _ = _clip_embeddings(models["clip"], [Image.fromarray(f) for f in frames], "x")
    u = _unit(img)
    pairs = [float(u[i] @ u[j]) for i in range(len(u)) for j in range(len(u)) if i != j]
    assert frame_consistency(frames, model=models["clip"], size=None) == pytest.approx(np.mean(pairs), abs=1e-5)


def test_pickscore_is_scaled_cosine_mean(models, frames):
    prompt = "a watercolor painting of a cat"
    resized = [Image.fromarray(f).resize((480, 480)) for f in frames]
    img, txt, scale = _clip_embeddings(models["clip"], resized, prompt)
    expected = float(np.mean(scale * (_unit(txt) @ _unit(img).T)[0]))
    got = pickscore(frames, prompt, model=models["clip"], processor=models["clip"])
    assert got == pytest.approx(expected, abs=1e-4)


def test_open_clip_backend_matches_its_own_towers(tmp_path, frames):
    open_clip = pytest.importorskip("open_clip")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "tiny-reatco-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "tiny-reatco-test.json")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-reatco-test")
    ckpt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    images = [Image.fromarray(f).resize((480, 480)) for f in frames]
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(i) for i in images])).double().numpy()
        txt = model.encode_text(open_clip.get_tokenizer("tiny-reatco-test")(["a cat"])).double().numpy()
        scale = float(model.logit_scale.exp())
    kw = dict(model="tiny-reatco-test", backend="open_clip", pretrained=str(ckpt))
    u = _unit(img)
    pairs = [float(u[i] @ u[j]) for i in range(len(u)) for j in range(len(u)) if i != j]
    assert frame_consistency(frames, **kw) == pytest.approx(np.mean(pairs), abs=1e-5)
    assert text_alignment(frames, "a cat", **kw) == pytest.approx(float(np.mean(scale * u @ _unit(txt)[0])), abs=1e-4)


# ---------------------------------------------------------------------------- VISOR


def _det(label, cx, cy, size=10):
    return Detection(label, 0.9, (cx - size, cy - size, cx + size, cy + size))


@pytest.mark.parametrize("relation, a, b", [
    ("left", (10, 50), (80, 50)), ("right", (80, 50), (10, 50)),
    ("above", (50, 10), (50, 80)), ("below", (50, 80), (50, 10)),
])
def test_visor_each_relation_on_synthetic_detections(relation, a, b):
    good = [_det("cat", *a), _det("dog", *b)]
    wrong = [_det("cat", *b), _det("dog", *a)]
    only_cat = [_det("cat", *a)]
    assert score_frame(good, "cat", "dog", relation) == (True, True)
    assert score_frame(wrong, "cat", "dog", relation) == (True, False)
    # "any pair": one well-placed dog among misplaced ones is enough
    beyond = (2 * b[0] - a[0], 2 * b[1] - a[1])  # a second dog, placed correctly w.r.t. the cat at b
    assert score_frame(wrong + [_det("dog", *beyond)], "cat", "dog", relation) == (True, True)
    scores = visor_scores([good, wrong, only_cat, good], "cat", "dog", relation)
    assert scores["oa"] == pytest.approx(75.0)
    assert scores["visor_uncond"] == pytest.approx(50.0)
    assert scores["visor_cond"] == pytest.approx(100 * 2 / 3)
    assert scores["visor_uncond"] == pytest.approx(scores["oa"] * scores["visor_cond"] / 100)
    assert relation_from_centres(a, b) == relation


def test_visor_nothing_detected_and_bad_relation():
    scores = visor_scores([[], [_det("cat", 1, 1)]], "cat", "dog", "left")
    assert scores["oa"] == 0 and scores["visor_uncond"] == 0 and math.isnan(scores["visor_cond"])
    with pytest.raises(ValueError, match="unknown relation"):
        relation_holds("behind", (0, 0), (1, 1))


def test_expected_relation_from_phrase_and_masks():
    assert parse_relation("A jellyfish and a goldfish, with the jellyfish to the left of the goldfish") == (
        "jellyfish", "left", "goldfish")
    assert parse_relation("a cat sitting on a wall, with a bird above the cat.") == ("bird", "above", "cat")
    assert parse_relation("the rabbit is right of the chicken") == ("rabbit", "right", "chicken")
    assert parse_relation("a dog below a kite") == ("dog", "below", "kite")
    assert parse_relation("two dolphins swimming") is None
    a = np.zeros((2, 20, 40), bool)
    b = np.zeros((2, 20, 40), bool)
    a[:, 5:10, 2:8], b[:, 5:10, 30:38] = True, True
    assert relation_from_masks(a, b) == "left" and relation_from_masks(b, a) == "right"


def test_owlvit_detection_matches_transformers_postprocess(models, frames):
    from transformers import OwlViTForObjectDetection, OwlViTProcessor

    detector = load_owlvit(models["owlvit"])
    images = to_pil_frames(frames[:2], None)
    ours = detector.detect(images, ["cat", "dog"], threshold=0.3)
    model = OwlViTForObjectDetection.from_pretrained(models["owlvit"]).eval()
    proc = OwlViTProcessor.from_pretrained(models["owlvit"])
    for image, dets in zip(images, ours):
        inputs = proc(text=[["a photo of a cat", "a photo of a dog"]], images=image, return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs)
        ref = proc.image_processor.post_process_object_detection(
            out, threshold=0.3, target_sizes=torch.tensor([image.size[::-1]]))[0]
        assert len(dets) == len(ref["scores"])
        for d, s, label, box in zip(dets, ref["scores"], ref["labels"], ref["boxes"]):
            assert d.label == ["cat", "dog"][int(label)] and d.score == pytest.approx(float(s), abs=1e-5)
            assert np.allclose(d.box, box.numpy(), atol=1e-3)
    result = visor(frames[:2], "cat", "dog", "left", model=models["owlvit"], threshold=0.3)
    assert result == visor_scores(ours, "cat", "dog", "left")


# ---------------------------------------------------------------------------- fidelity


def test_psnr_outside_regions():
    rng = np.random.RandomState(1)
    src = rng.randint(0, 256, (3, 16, 20, 3), dtype=np.uint8)
    regions = np.zeros((2, 3, 16, 20), bool)
    regions[0, :, 2:6, 2:6] = True
    regions[1, :, 8:12, 10:18] = True
    inv = invariant_mask(regions)
    assert inv.shape == (3, 16, 20) and not inv[:, 3, 3].any() and inv[:, 0, 0].all()
    edited = src.copy()
    edited[regions.any(0)] = 255 - edited[regions.any(0)]  # change only inside the regions
    assert masked_psnr(edited, src, inv) == math.inf
    assert masked_psnr(edited, src) < 20  # the whole frame did change
    noisy = edited.copy()
    noisy[:, 0, 0] = np.clip(noisy[:, 0, 0].astype(int) + 10, 0, 255).astype(np.uint8)
    diff = (noisy.astype(float) - src) ** 2
    mse = diff[inv].sum() / (inv.sum() * 3)
    assert masked_psnr(noisy, src, inv) == pytest.approx(10 * np.log10(255**2 / mse))


def _lpips_by_hand(net, a, b, weight=None):
    """LPIPS from its parts: scaled input, AlexNet slices, unit-normalised channels, squared
    difference, 1x1 linear heads, bilinear upsample (or spatial mean), sum over layers."""
    import torch.nn.functional as F

    x0 = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1
    x1 = torch.from_numpy(b).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        f0, f1 = net.net(net.scaling_layer(x0)), net.net(net.scaling_layer(x1))
        total = 0
        for k in range(len(f0)):
            n0 = f0[k] / (f0[k].pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            n1 = f1[k] / (f1[k].pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = net.lins[k].model((n0 - n1) ** 2)
            if weight is None:
                total = total + d.mean(dim=(2, 3))[:, 0]
            else:
                total = total + F.interpolate(d, size=a.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
    if weight is None:
        return float(total.mean())
    w = torch.from_numpy(weight).float()
    return float(((total * w).sum(dim=(1, 2)) / w.sum(dim=(1, 2))).mean())


def test_lpips_against_direct_computation(tmp_path):
    torch.manual_seed(0)
    net = load_lpips("random")
    rng = np.random.RandomState(2)
    a = rng.randint(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    b = a.copy()
    b[:, 20:40, 20:40] = rng.randint(0, 256, (3, 20, 20, 3))
    inv = np.ones((3, 64, 64), bool)
    inv[:, 16:44, 16:44] = False
    assert lpips_distance(a, b, model=net) == pytest.approx(_lpips_by_hand(net, a, b), rel=1e-4)
    assert lpips_distance(a, b, inv, model=net) == pytest.approx(_lpips_by_hand(net, a, b, inv), rel=1e-4)
    assert lpips_distance(a, a, inv, model=net) == 0.0
    assert lpips_distance(a, b, inv, model=net, batch_size=2) == pytest.approx(lpips_distance(a, b, inv, model=net))


def test_lpips_local_alexnet_weights(tmp_path):
    from torchvision.models import alexnet

    torch.manual_seed(3)
    state = alexnet(weights=None).state_dict()
    path = tmp_path / "alexnet.pth"
    torch.save(state, path)
    net = load_lpips(str(path))
    assert torch.equal(net.net.slice1._modules["0"].weight, state["features.0.weight"])
    assert torch.equal(net.net.slice5._modules["10"].bias, state["features.10.bias"])
    from reatco.errors import ConfigError

    with pytest.raises(ConfigError, match="lpips_backbone"):
        load_lpips(str(tmp_path / "missing.pth"))


def test_metric_frames_are_listed_in_the_order_read_video_reads_them(tmp_path):
    """Unpadded names: frame2 before frame10 (a plain sort put frame10 first)."""
    from PIL import Image

    from reatco.metrics.frames import list_frame_files
    from reatco.video import frame_files

    for i in (1, 2, 10):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / f"frame{i}.png")
    names = [p.name for p in list_frame_files(tmp_path)]
    assert names == ["frame1.png", "frame2.png", "frame10.png"] == [p.name for p in frame_files(tmp_path)]
