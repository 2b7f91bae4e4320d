"""JupyterLab for the lab, as `make lab` starts it: `jupyter lab --config=jupyter/jupyter_lab_config.py`.

The browser tests (tests/browser/) start the server with this same file, so what they check is what a student
gets. Options given on the command line (port, token, root_dir) take precedence over the values here.
"""

from pathlib import Path

c = get_config()  # noqa: F821 (Jupyter defines get_config when it loads this file)

ROOT = Path(__file__).resolve().parent.parent  # the repository

c.ServerApp.root_dir = str(ROOT)
c.ServerApp.ip = "127.0.0.1"  # this machine only
c.ServerApp.open_browser = False  # make lab prints the URL; the student opens it

# Open the first notebook of the course instead of the Launcher.
c.LabApp.default_url = "/lab/tree/notebooks/00_why_interpretability.ipynb"

# No "Would you like to get notified about official Jupyter news?" pop-up over the outputs, and no request to
# the internet for news or for a newer JupyterLab (lab rooms are often offline).
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.handlers.announcements.NeverCheckForUpdate"
# JupyterLab's default settings for this server: overrides.json turns the news question off for good.
c.LabApp.app_settings_dir = str(Path(__file__).resolve().parent / "settings")
