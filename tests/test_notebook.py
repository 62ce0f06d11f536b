"""The quickstart notebook runs top to bottom (with a tiny training budget) and shows its videos and curves."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"

# Appended to the in-memory copy only: reports which Python ran the kernel and which mario_rl it imported.
PROBE = """import json, sys, mario_rl
print("PROBE " + json.dumps({"prefix": sys.prefix, "mario_rl": mario_rl.__file__}))"""


def _stream_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MARIO_RL_NB_STEPS", "300")
    monkeypatch.setenv("MARIO_RL_NB_BURNIN", "100")
    monkeypatch.setenv("MARIO_RL_NB_VIDEO_STEPS", "50")

    nb_path = tmp_path / NOTEBOOK.name
    shutil.copy(NOTEBOOK, nb_path)
    nb = nbformat.read(nb_path, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "store the notebook without outputs"
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))

    # The "python3" kernelspec launches `python -m ipykernel_launcher`; jupyter_client runs it with
    # sys.executable, i.e. this venv's Python (checked below by the probe).
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    probe = next(line for line in _stream_text(nb.cells[-1]).splitlines() if line.startswith("PROBE "))
    info = json.loads(probe[len("PROBE ") :])
    assert Path(info["prefix"]).resolve() == Path(sys.prefix).resolve(), info
    import mario_rl

    assert Path(info["mario_rl"]).resolve() == Path(mario_rl.__file__).resolve(), info
    # The setup cell saw the budgets from the environment (the kernel inherits it).
    setup = next(c for c in nb.cells if c.cell_type == "code")
    assert "REPO_URL" in setup.source and "STEPS=300" in _stream_text(setup)

    for rel in (
        "videos/random.mp4",
        "videos/random.gif",
        "videos/trained.mp4",
        "videos/trained.gif",
        "runs/notebook/policy.safetensors",
        "runs/notebook/plots/learning_curves.png",
    ):
        assert (tmp_path / rel).is_file(), f"missing {rel}"

    # The GIFs and the learning curve are shown inline as images.
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "display_data" and ("image/gif" in o["data"] or "image/png" in o["data"])
    ]
    assert sum("image/gif" in o["data"] for o in images) == 2
    assert sum("image/png" in o["data"] for o in images) == 1
