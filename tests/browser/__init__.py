"""Browser tests of the lab (JupyterLab in headless Chromium)."""
