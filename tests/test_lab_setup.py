"""`make lab`'s JupyterLab: the page it opens, no news pop-up, and a kernel that runs Keras on torch.

The browser tests (tests/browser/) check the same in Chromium; these checks need no browser.

The lab's Jupyter kernel runs Keras on torch whatever a notebook imports first.

Keras picks its backend when it is first imported; its default is tensorflow, which the lab does not install.
`import labkit` pins torch, but a student who types `import keras` first would get "No module named
'tensorflow'". So the kernelspec that `make` installs into .venv (the kernel `make lab` starts) sets
KERAS_BACKEND=torch. Other setups (the conda environment, which has tensorflow) keep labkit's BackendError
(tests/test_models.py).
"""

import json
import sys
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel
from traitlets.config.loader import PyFileConfigLoader

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "jupyter" / "jupyter_lab_config.py"


def test_make_lab_uses_the_project_config():
    assert "--config=jupyter/jupyter_lab_config.py" in (REPO / "Makefile").read_text()


def test_lab_opens_notebook_00_without_news():
    config = PyFileConfigLoader(CONFIG.name, path=str(CONFIG.parent)).load_config()
    url = config.LabApp.default_url
    assert url.startswith("/lab/tree/notebooks/00_"), url
    assert (Path(config.ServerApp.root_dir) / url.removeprefix("/lab/tree/")).is_file(), f"{url}: no such notebook"
    overrides = json.loads((Path(config.LabApp.app_settings_dir) / "overrides.json").read_text())
    assert overrides["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"
    assert config.LabApp.news_url is None

# make's stamp: this Python is the .venv that `make lab` and `make test` create and set up.
MADE_BY_MAKE = (Path(sys.prefix) / ".labkit-installed").exists()


@pytest.mark.skipif(not MADE_BY_MAKE, reason="not the .venv made by make, whose kernelspec make installs")
def test_lab_kernel_runs_keras_on_torch_when_keras_is_imported_first(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)  # a student's shell does not set it
    monkeypatch.delenv("MPLBACKEND", raising=False)
    manager, client = start_new_kernel(kernel_name="python3", startup_timeout=120)
    outputs = []

    def keep(msg):
        if msg["msg_type"] == "stream":
            outputs.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            outputs.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

    try:
        reply = client.execute_interactive("import keras\nprint(keras.backend.backend())", timeout=180,
                                           output_hook=keep)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    text = "".join(outputs)
    assert reply["content"]["status"] == "ok", f"`import keras` first fails in the lab's kernel: {text}"
    assert text.strip() == "torch", text
