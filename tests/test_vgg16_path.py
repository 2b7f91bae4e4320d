"""The README's promise: every solution notebook also runs with ``LABKIT_BACKBONE=vgg16``.

A seeded random-weights VGG16 is written in Keras' own h5 format (the layout of the published ImageNet file) to a
temporary folder, named by ``LABKIT_VGG16_WEIGHTS``, and every ``solutions/*.ipynb`` (a glob: later stages are
covered as they are added) runs top to bottom in a fresh kernel on it. Any cell error fails the test. Outputs
are not compared: random weights predict nothing in particular, and minivgg's stored outputs do not apply.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


@pytest.fixture(scope="module")
def vgg16_env(tmp_path_factory):
    """The environment a kernel needs to run on the random VGG16 (and nothing outside tmp: Keras' cache included)."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from labkit import models

    folder = tmp_path_factory.mktemp("vgg16")
    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None)
    path = folder / models.VGG16_FILE
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    del model
    assert models.vgg16_problem(path) is None
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        "LABKIT_BACKBONE": "vgg16",
        "LABKIT_VGG16_WEIGHTS": str(path),
        "KERAS_HOME": str(folder / "keras"),
        "MPLBACKEND": "Agg",
        "PYTHONPATH": pythonpath,
    }


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_runs_on_vgg16(path, vgg16_env, monkeypatch):
    from nbclient import NotebookClient

    for key, value in vgg16_env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    nb = nbformat.read(str(path), as_version=4)
    # First, proof that the kernel sees the vgg16 environment (it inherits this process's).
    probe = "import os\nassert os.environ['LABKIT_BACKBONE'] == 'vgg16', os.environ.get('LABKIT_BACKBONE')"
    nb.cells.insert(0, nbformat.v4.new_code_cell(probe))
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError (with the cell and its traceback) on the first failing cell
    ran = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert ran and all(c.execution_count for c in ran), "some code cells did not run"
