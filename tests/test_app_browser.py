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
