"""One JupyterLab server and one headless Chromium for the whole browser suite.

The server is started the way `make lab` starts it: the same `jupyter/jupyter_lab_config.py`, with only the
port, a token and the folder it serves given on the command line. It serves a temporary copy of `notebooks/`
and `solutions/` (JupyterLab saves what it runs; the repository's notebooks must not change), and it is
stopped by its PID at the end.

Chromium: `LABKIT_CHROMIUM` if set, else `chromium` (Debian's package) or `chromium-browser` on the PATH.
Without one (or without playwright) the suite is skipped with one line, unless `LABKIT_REQUIRE_BROWSER=1`
(set by `.ci/run`), where that is a failure. Screenshots go to `<pytest's basetemp>/browser-screenshots`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "jupyter" / "jupyter_lab_config.py"
VIEWPORT = {"width": 1400, "height": 900}
# What works offline in a container: no sandbox (root), no GPU, no network chatter of Chromium's own.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMINGS: list[str] = []  # one line per notebook, printed at the end of the run
SERVER_START_S = 120  # a cold start on a loaded 2-core machine


def find_chromium() -> str | None:
    """The Chromium to drive: LABKIT_CHROMIUM, else one on the PATH; None if there is none."""
    named = os.environ.get("LABKIT_CHROMIUM")
    if named is not None:
        return named if Path(named).is_file() and os.access(named, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_missing() -> str | None:
    """Why the browser suite cannot run here (None if it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if find_chromium() is None:
        return "no Chromium found (apt-get install chromium, or set LABKIT_CHROMIUM=/path/to/chromium)"
    return None


def pytest_report_header(config):
    return None if browser_missing() else f"browser: {find_chromium()}"


@pytest.fixture(scope="session", autouse=True)
def browser_available():
    """Skip every browser test with one line where there is no browser; fail instead under LABKIT_REQUIRE_BROWSER=1."""
    missing = browser_missing()
    if missing and os.environ.get("LABKIT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests cannot run (LABKIT_REQUIRE_BROWSER=1): {missing}", pytrace=False)
    if missing:
        pytest.skip(f"browser tests skipped: {missing}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """In the server's process (Linux): get SIGTERM if pytest dies, so no server outlives a killed run."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Lab:
    """A running JupyterLab server: its base URL, token, the folder it serves, and its REST API."""

    def __init__(self, url: str, token: str, root: Path, process: subprocess.Popen, log: Path):
        self.url, self.token, self.root, self.process, self.log = url, token, root, process, log

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def page_url(self, path: str = "") -> str:
        return f"{self.url}/{path}{'&' if '?' in path else '?'}token={self.token}"

    def shutdown_kernels(self):
        """End every session and kernel (each notebook's kernel holds a torch process: free it for the next)."""
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", "DELETE")
        for kernel in self.api("kernels"):
            self.api(f"kernels/{kernel['id']}", "DELETE")

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    for folder in ("notebooks", "solutions"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns(".*"))
    env = dict(os.environ)
    # A student's shell has no MPLBACKEND (CI exports Agg, which would stop plt.show() from drawing inline).
    env.pop("MPLBACKEND", None)
    # Nothing of the machine's own Jupyter settings, workspaces or config: the project's config only.
    for name, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTERLAB_SETTINGS_DIR", "user-settings"),
                      ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                      ("IPYTHONDIR", "ipython")):
        env[name] = str(base / sub)
    port, token = free_port(), secrets.token_hex(16)
    log = base / "server.log"
    command = [sys.executable, "-m", "jupyterlab", f"--config={CONFIG}", f"--port={port}", "--port_retries=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    if os.geteuid() == 0:
        command.append("--allow-root")  # as make lab does for root (containers, CI)
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   preexec_fn=_die_with_parent)
    server = Lab(f"http://127.0.0.1:{port}", token, root, process, log)
    started = time.monotonic()
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"JupyterLab exited with {process.returncode}:\n{server.log_tail()}")
            try:
                server.api("status")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{server.log_tail()}")
                time.sleep(0.3)
        t0 = time.monotonic()
        yield server
        TIMINGS.append(f"server up for {time.monotonic() - t0:.0f} s (started in {t0 - started:.1f} s)")
    finally:
        try:
            if process.poll() is None:
                server.shutdown_kernels()
        except OSError:
            pass
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    """Where the screenshots go (printed at the end of the run)."""
    folder = tmp_path_factory.getbasetemp() / "browser-screenshots"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def page(lab, tmp_path_factory):
    """One Chromium page for the whole suite; console errors are collected in page.console_errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=find_chromium(), headless=True,
            args=CHROMIUM_FLAGS, viewport=VIEWPORT)
        try:
            tab = context.pages[0] if context.pages else context.new_page()
            tab.console_errors = []
            tab.on("console", lambda m: m.type == "error" and tab.console_errors.append(m.text))
            yield tab
        finally:
            context.close()


def pytest_terminal_summary(terminalreporter, config):
    factory = getattr(config, "_tmp_path_factory", None)
    base = getattr(factory, "_basetemp", None)
    folder = Path(base) / "browser-screenshots" if base else None
    missing = browser_missing()
    if missing and terminalreporter.stats.get("skipped"):
        terminalreporter.write_line(f"browser tests skipped: {missing}", yellow=True, bold=True)
    for line in TIMINGS:
        terminalreporter.write_line(f"browser: {line}")
    if folder and folder.is_dir() and any(folder.iterdir()):
        terminalreporter.write_line(f"browser screenshots: {folder}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed and "page" in item.funcargs:
        folder = item.funcargs.get("shots")
        if folder is not None:  # what the page showed when the test failed
            try:
                item.funcargs["page"].screenshot(path=folder / f"FAILED-{item.name}.png".replace("/", "_"))
            except Exception:  # noqa: BLE001 (a screenshot must not hide the failure itself)
                pass
    return report
