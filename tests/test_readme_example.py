"""The README's Python example runs as written on the shipped model and gives the demo's edit
(configs/shapes.yaml): the colour detector finds each new object, with its shape, inside its
region in every frame of the video the example writes."""

import re
from pathlib import Path

from reatco.config_files import load_config
from reatco.regions.parsing import parse_region
from reatco.toy.detector import detect
from reatco.video import read_video

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("From Python, on the shipped model")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_readme_python_example_gives_the_demos_edit(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").symlink_to(ROOT / "data")  # the example's paths are relative to the repository
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    assert "'loss'" in capsys.readouterr().out  # it prints the first RAD record
    frames = namespace["out"].frames
    assert frames.shape == (8, 3, 64, 64) and 0 <= float(frames.min()) and float(frames.max()) <= 1

    demo = load_config(ROOT / "configs" / "shapes.yaml").edits[0]
    assert namespace["out"].rad_losses[0]["inner"].keys() == {o.word for o in demo.objects}
    written = ((read_video(tmp_path / "edited.mp4", 64, 64) + 1) * 127.5).round().clamp(0, 255).byte()
    written = written.permute(0, 2, 3, 1).numpy()
    for obj in demo.objects:
        colour, shape = obj.word.split()
        boxes = parse_region(obj, 8, 64, 64, 8).boxes_px().tolist()
        for f, (x1, y1, x2, y2) in enumerate(boxes):
            found = detect(written[f], [colour])[colour]
            assert found.found and x1 <= found.centroid[0] <= x2 and y1 <= found.centroid[1] <= y2, (obj.word, f, found)
            assert found.shape == shape, (obj.word, f, found.shape)
