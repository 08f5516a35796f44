"""scripts/app.py end to end in a real headless browser (Debian's chromium driven by Playwright):
open the demo clip, draw object 1's box on two keyframes, let object 2 be found from its source
word, preview, run a short edit on the shapes model, and check the outputs and a screenshot."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = ["tune.steps=3", "sampling.steps=4", "rad.max_update_steps=2", "rad.refinement_thresholds={}"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def app(tmp_path):
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "app.py"), "--config", str(ROOT / "configs" / "shapes.yaml"),
                             "--port", str(port), "--output_dir", str(tmp_path / "out"), "--set", *FAST],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("the app exited: " + (tmp_path / "app.log").read_text()[-3000:])
                time.sleep(0.5)
        else:
            raise RuntimeError("the app did not start in 120 s: " + (tmp_path / "app.log").read_text()[-3000:])
        yield url, tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _draw(page, box, scale=4):
    """Drag a box given in working pixels on the annotator's canvas (the image is centred in it)."""
    page.locator("#annotator button[title^='Create box']").click()
    canvas = page.locator("#annotator canvas").first
    bb = canvas.bounding_box()
    side = 64 * scale * min(1.0, bb["height"] / (64 * scale))
    left = bb["x"] + (bb["width"] - side) / 2
    top = bb["y"] + (bb["height"] - side) / 2
    k = side / 64
    page.mouse.move(left + box[0] * k, top + box[1] * k)
    page.mouse.down()
    page.mouse.move(left + box[2] * k, top + box[3] * k, steps=8)
    page.mouse.up()


def test_browser_editor_draws_runs_and_downloads(app):
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    if executable is None:
        message = "no chromium on this machine: apt-get install chromium (.ci/run installs it)"
        if os.environ.get("CI"):  # CI installs it: a missing browser there is a broken install, not a skip
            pytest.fail(message)
        pytest.skip(message)
    url, tmp = app
    external = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.on("request", lambda r: external.append(r.url) if not r.url.startswith((url, "data:", "blob:")) else None)
        page.goto(url, wait_until="load")
        page.wait_for_selector("#open", timeout=60_000)
        page.click("#open")
        page.wait_for_selector("#status :text('8 frames')", timeout=60_000)
        # object 1: clear the config's keyframes, draw two new ones
        page.click("#clear_keys")
        _draw(page, [24, 40, 48, 64])
        page.click("#set_key")
        page.wait_for_selector("#status :text('keyframe 0')")
        slider = page.locator("#frame input[type=number]")
        slider.fill("7")
        slider.press("Enter")
        time.sleep(1.0)
        _draw(page, [32, 32, 56, 56])
        page.click("#set_key")
        page.wait_for_selector("#status :text('keyframe 7')")
        # object 2: found from the source word it replaces
        page.locator("#obj label:has-text('2')").click()
        time.sleep(0.5)
        page.locator("#mode label:has-text('source word')").click()
        page.locator("#source_word input").click()
        page.locator("ul[role=listbox] li:has-text('blue square')").first.click()  # the source prompt's words
        time.sleep(1.0)
        summary = page.locator("#summary textarea").input_value()
        assert "object 1 — 'green circle': keyframes 0:" in summary and "7:" in summary
        assert "object 2 — 'yellow triangle': from source word 'blue square'" in summary
        page.click("#preview")
        page.wait_for_selector("#gallery img", timeout=120_000)
        page.click("#run")
        page.wait_for_selector("#status :text('done')", timeout=240_000)
        page.wait_for_selector("#result img")
        shot = tmp / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert external == [], f"the page fetched from outside: {external[:5]}"

    folder = tmp / "out" / "app"
    doc = json.loads((folder / "regions.json").read_text())
    circle, triangle = doc["objects"]
    box0, box7 = circle["frames"][0]["box"], circle["frames"][7]["box"]
    assert np.allclose(box0, [24, 40, 48, 64], atol=2) and np.allclose(box7, [32, 32, 56, 56], atol=2)
    mid = circle["frames"][3]["box"]  # interpolated between the keyframes
    assert np.allclose(mid, np.array(box0) + (np.array(box7) - np.array(box0)) * 3 / 7, atol=0.01)
    assert triangle["source"].startswith("source: attention of source word 'blue square'")
    # the downloadable config reruns the same edit
    from reatco.config_files import load_config

    cfg = load_config(folder / "config.yaml")
    assert cfg.edits[0].objects[1].source.word == "blue square" and sorted(cfg.edits[0].objects[0].boxes) == [0, 7]
    # the edit: IRJS kept the source outside the regions
    from PIL import Image

    from reatco.metrics.fidelity import masked_psnr
    from reatco.video import read_video, to_uint8

    source = to_uint8((read_video(ROOT / "data" / "shapes-demo" / "frames", 64, 64, 8) + 1) / 2)
    edited = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sorted((folder / "frames").iterdir())])
    outside = np.ones(edited.shape[:3], bool)
    for obj in doc["objects"]:
        for item in obj["frames"]:
            x1, y1, x2, y2 = (int(round(v)) for v in item["box"])
            outside[item["frame"], max(y1 - 4, 0):y2 + 4, max(x1 - 4, 0):x2 + 4] = False
    assert masked_psnr(edited, source, outside) > 25
    # the screenshot shows the page with its result
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[1] == 1280 and image.shape[0] > 800 and image.std() > 10
    target = os.environ.get("REATCO_APP_SCREENSHOT")
    if target:  # how docs/app.png is made
        shutil.copy(shot, target)


def _tracked_by_the_app(spec):
    """The masks the app's tracker found for `spec` on the demo clip, read from the content-keyed
    cache the app process shares with this one ($REATCO_CACHE_DIR, tests/conftest.py)."""
    from reatco.regions.settings import source_settings
    from reatco.regions.trackers import _cache_path, _read_cached
    from reatco.video import read_video, to_uint8

    frames = to_uint8((read_video(ROOT / "data" / "shapes-demo" / "frames", 64, 64, 8) + 1) / 2)
    path = _cache_path(os.environ["REATCO_CACHE_DIR"], frames, source_settings(spec), None)
    assert path.exists(), "the app did not cache what its tracker found"
    return _read_cached(path)


def test_browser_box_on_one_frame_becomes_a_tracked_mask_on_every_frame(app):
    """Object 2 from a box drawn on frame 3 only, tracked by SAM 2 (a tiny random model saved in a
    folder and named in the page, standing in for the real weights): the edit's regions on every
    other frame are the tracker's masks for that box (rounded out to the 4 px latent cells), and
    the downloadable config names the tracker and the box."""
    from playwright.sync_api import sync_playwright

    from test_region_trackers import tiny_sam2_video

    executable = _chromium()
    if executable is None:
        message = "no chromium on this machine: apt-get install chromium (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    url, tmp = app
    weights = tiny_sam2_video(tmp / "sam2")
    box = [13, 7, 32, 25]  # the blue square on frame 3 (data/shapes-demo/truth.json)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(url, wait_until="load")
        page.wait_for_selector("#open", timeout=60_000)
        page.click("#open")
        page.wait_for_selector("#status :text('8 frames')", timeout=60_000)
        page.locator("#obj label:has-text('2')").click()
        time.sleep(0.5)
        page.locator("#mode label:has-text('tracked box (sam2)')").click()
        time.sleep(0.5)
        slider = page.locator("#frame input[type=number]")
        slider.fill("3")
        slider.press("Enter")
        time.sleep(1.0)
        _draw(page, box)
        page.click("#set_key")
        page.wait_for_selector("#status :text('sam2 box on frame 3')")
        page.get_by_text("tracker weights (hub id or local folder)").click()
        page.locator("#sam2_model textarea, #sam2_model input").first.fill(str(weights))
        time.sleep(0.5)
        summary = page.locator("#summary textarea").input_value()
        assert "object 2 — 'yellow triangle': sam2 tracks the box" in summary and "frame 3" in summary
        page.click("#preview")
        page.wait_for_selector("#gallery img", timeout=120_000)
        page.click("#run")
        page.wait_for_selector("#status :text('done')", timeout=240_000)
        browser.close()

    folder = tmp / "out" / "app"
    doc = json.loads((folder / "regions.json").read_text())
    tracked = doc["objects"][1]
    assert tracked["source"].startswith("source: tracker sam2") and "on frame 3" in tracked["source"]
    drawn = [float(v) for v in tracked["source"].split("box ")[1].split("]")[0].strip("[").split(",")]
    assert np.allclose(drawn, box, atol=1.0)  # what the page drew, in working pixels

    # the same tracker on the same frames and box, run here: its masks are the regions of every frame
    from PIL import Image

    from reatco.regions.trackers import region_from_tracked

    found = _tracked_by_the_app({"tracker": "sam2", "box": drawn, "frame": 3, "model": str(weights)})
    assert found.masks.shape == (1, 8, 64, 64)
    expected = region_from_tracked(found, {}, "s", min_side=8, whole_cells=4).pixel_masks.numpy()
    for item in tracked["frames"]:
        mask = np.asarray(Image.open(folder / item["mask"]).convert("L")) > 127
        assert (mask == expected[item["frame"]]).all(), item["frame"]
    from reatco.config_files import load_config

    src = load_config(folder / "config.yaml").edits[0].objects[1].source
    assert src.tracker == "sam2" and src.frame == 3 and src.model == str(weights)


def test_browser_word_becomes_every_instance_and_the_page_chooses_one(app):
    """Object 1 from a word SAM 3 tracks (a tiny random model named in the page): "Find instances"
    lists every instance the tracker found, numbered as `instance: k` counts them; choosing 2 in the
    page makes the edit's region that instance's masks."""
    from playwright.sync_api import sync_playwright

    from test_region_trackers import tiny_sam3_video

    executable = _chromium()
    if executable is None:
        message = "no chromium on this machine: apt-get install chromium (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    url, tmp = app
    weights = tiny_sam3_video(tmp / "sam3")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.goto(url, wait_until="load")
        page.wait_for_selector("#open", timeout=60_000)
        page.click("#open")
        page.wait_for_selector("#status :text('8 frames')", timeout=60_000)
        page.locator("#mode label:has-text('tracked word (sam3)')").click()
        page.locator("#source_word input").click()
        page.locator("ul[role=listbox] li:has-text('red circle')").first.click()  # the source prompt's words
        page.get_by_text("tracker weights (hub id or local folder)").click()
        page.locator("#sam3_model textarea, #sam3_model input").first.fill(str(weights))
        time.sleep(0.5)
        page.click("#find_instances")
        page.wait_for_selector("#status :text('instances found')", timeout=120_000)
        n_instances = int(page.locator("#status").inner_text().split(": ")[1].split(" ")[0])
        assert page.locator("#instances img").count() >= min(n_instances, 6)
        page.locator("#instance input").fill("2")
        page.locator("#instance input").press("Enter")
        time.sleep(1.0)
        summary = page.locator("#summary textarea").input_value()
        assert "object 1 — 'green circle': sam3 tracks every 'red circle' (2)" in summary, summary
        page.click("#run")
        page.wait_for_selector("#status :text('done')", timeout=240_000)
        browser.close()

    from PIL import Image

    from reatco.regions.trackers import ranked_instances, region_from_tracked

    folder = tmp / "out" / "app"
    doc = json.loads((folder / "regions.json").read_text())
    chosen = doc["objects"][0]
    assert chosen["source"].startswith("source: tracker sam3") and "instance 2" in chosen["source"]
    # what the app's tracker found (cached by content under the cache the app shares with this test)
    tracked = _tracked_by_the_app({"tracker": "sam3", "query": "red circle", "model": str(weights)})
    assert n_instances == len(ranked_instances(tracked, {"score": 0.1})) >= 2
    expected = region_from_tracked(tracked, {"instance": 2, "score": 0.1}, "s", min_side=8, whole_cells=4).pixel_masks.numpy()
    for item in chosen["frames"]:
        mask = np.asarray(Image.open(folder / item["mask"]).convert("L")) > 127
        assert (mask == expected[item["frame"]]).all(), item["frame"]
