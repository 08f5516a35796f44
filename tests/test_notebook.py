"""examples/shapes_notebook.ipynb runs from top to bottom (so that it never rots)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_example_notebook_runs(tmp_path, monkeypatch):
    import os

    import nbformat
    from nbclient import NotebookClient

    for name in ("configs", "data"):  # run where the notebook's paths hold, without writing into the checkout
        (tmp_path / name).symlink_to(ROOT / name)
    # the kernel inherits the environment: this checkout's reatco first, one thread (a shared CPU)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(ROOT / "examples" / "shapes_notebook.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    for name in ("edited.mp4", "edited-wan.mp4"):
        assert (tmp_path / "outputs" / "notebook" / name).is_file(), name
    placed = ast.literal_eval(outputs[-1]["data"]["text/plain"])  # the last cell: where the detector found the objects
    for backbone in ("unet", "wan"):
        assert set(placed[backbone]) == {"green circle", "yellow triangle"}, backbone
        assert all(len(found) == 8 for found in placed[backbone].values()), backbone  # the clip's 8 frames
        # every frame found (measured: 8 of 8 frames each with this short schedule)
        assert all(all(found) for found in placed[backbone].values()), backbone
