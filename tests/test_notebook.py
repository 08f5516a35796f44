"""examples/shapes_notebook.ipynb runs from top to bottom (so that it never rots)."""

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
    assert (tmp_path / "outputs" / "notebook" / "edited.mp4").is_file()
    placed = outputs[-1]["data"]["text/plain"]  # the last cell: where the detector found the objects
    # both words, every frame found (measured: 8 of 8 frames each with this short schedule)
    assert "'green circle'" in placed and "'yellow triangle'" in placed and "False" not in placed
