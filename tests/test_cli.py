"""The `labkit` command line, run as a user runs it."""

import re
import subprocess
import sys


def labkit(*args, env=None):
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_info():
    r = labkit("info")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "backend: torch" in out and re.search(r"device\s+(cpu|cuda)", out)
    assert re.search(r"minivgg\s+bundled", out) and re.search(r"vgg16\s+(cached|missing|local file)", out)


def test_evaluate_prints_accuracy_last():
    r = labkit("evaluate", "minivgg", "--n", "200", "--seed", "4")
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"accuracy: 0\.\d{4}|accuracy: 1\.0000", last) and float(last.split()[1]) > 0.9


def test_fetch_missing_local_file_is_one_line(tmp_path):
    r = labkit("fetch", "vgg16", "--from", str(tmp_path / "nope.h5"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no weights file at" in r.stderr
