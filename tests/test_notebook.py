"""The quickstart notebook runs top to bottom (with a tiny training budget) and shows its videos and curves, on
both of its routes: in the kernel (Python 3.13+) and through `uv run mario-rl` (what an older kernel, Colab's,
takes; forced here with MARIO_RL_FORCE_UV=1 and run in the project's own environment)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"

# Appended to the in-memory copy only: reports which Python ran the kernel, which mario_rl modules the notebook
# had loaded into it (none on the uv route), and which mario_rl it imports.
PROBE = """import json, sys
loaded = sorted(m for m in sys.modules if m == "mario_rl" or m.startswith("mario_rl."))
import mario_rl
print("PROBE " + json.dumps({"prefix": sys.prefix, "mario_rl": mario_rl.__file__, "loaded": loaded}))"""


def _stream_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.slow
@pytest.mark.parametrize("route", ["kernel", "uv"])
def test_quickstart_notebook_runs(route, tmp_path, monkeypatch):
    monkeypatch.setenv("MARIO_RL_NB_STEPS", "300")
    monkeypatch.setenv("MARIO_RL_NB_BURNIN", "100")
    monkeypatch.setenv("MARIO_RL_NB_VIDEO_STEPS", "50")
    if route == "uv":
        if "UV" not in os.environ and shutil.which("uv") is None:
            pytest.skip("uv is not installed")
        monkeypatch.setenv("MARIO_RL_FORCE_UV", "1")
        monkeypatch.setenv("MARIO_RL_PROJECT", str(ROOT))  # the notebook runs in tmp_path, outside the checkout
    else:
        monkeypatch.delenv("MARIO_RL_FORCE_UV", raising=False)

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
    # The setup cell saw the budgets from the environment (the kernel inherits it) and took the route asked for.
    setup = next(c for c in nb.cells if c.cell_type == "code")
    out = _stream_text(setup)
    assert "REPO_URL" in setup.source and "STEPS=300" in out
    if route == "uv":
        assert "on Python 3.13" in out and "through uv" in out, out
        assert info["loaded"] == [], info  # every command ran in uv's processes, none in the kernel
    else:
        assert "in this kernel" in out, out
        assert "mario_rl.cli" in info["loaded"], info
    assert not (tmp_path / "mario_rl").exists()  # inside a checkout (or told where it is), nothing is cloned

    for rel in (
        "videos/random.mp4",
        "videos/random.gif",
        "videos/trained.mp4",
        "videos/trained.gif",
        "videos/4-4.mp4",
        "videos/4-4.gif",
        "runs/notebook/policy.safetensors",
        "runs/notebook/plots/learning_curves.png",
    ):
        assert (tmp_path / rel).is_file(), f"missing {rel}"

    # The policy was used by hand, the stage board printed, and 4-4 played with its bundled policy.
    text = "\n".join(_stream_text(c) for c in nb.cells if c.cell_type == "code")
    assert "step  0: x_pos =" in text
    assert "world | stage 1" in text, text
    assert "playing 4-4 with the bundled policy for 4-4" in text

    # The GIFs and the learning curve are shown inline as images.
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "display_data" and ("image/gif" in o["data"] or "image/png" in o["data"])
    ]
    assert sum("image/gif" in o["data"] for o in images) == 3
    assert sum("image/png" in o["data"] for o in images) == 1
