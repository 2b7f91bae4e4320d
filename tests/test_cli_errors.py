"""The command line: every expected failure is one line on stderr and a non-zero exit with nothing half-written;
a bug keeps its traceback; `--help` imports nothing heavy (its time is measured in bench/cli.py)."""

import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from labkit import cli, data, explain, models

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "keras", "numpy", "jsonschema", "matplotlib", "PIL")


@pytest.mark.parametrize("argv", [["--help"], ["info", "--help"], ["fetch", "--help"], ["evaluate", "--help"],
                                  ["explain", "--help"], ["release", "--help"]], ids=" ".join)
def test_help_imports_nothing_heavy(argv):
    code = (
        "import sys\nfrom labkit import cli\n"
        f"try:\n    cli.main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules and getattr(sys.modules[m], '__spec__', None) "
        "and type(sys.modules[m].__spec__.loader).__name__ != '_LazyLoader']\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage: labkit" in r.stdout


def test_import_labkit_still_pins_the_backend():
    code = "import os, labkit; assert os.environ['KERAS_BACKEND'] == 'torch'; from labkit import models; print(models.keras.backend.backend())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": "tensorflow"})
    assert r.returncode == 0 and r.stdout.strip() == "torch", r.stderr[-2000:]


def run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labkit "), err
    for needle in needles:
        assert needle in err, err


def test_method_names_with_hyphens():
    parser = cli.build_parser()
    for given, expected in (("guided-backprop", "guided_backprop"), ("guided-gradcam", "guided_gradcam"),
                            ("guided_gradcam", "guided_gradcam"), ("gradcam", "gradcam")):
        assert parser.parse_args(["explain", "x.png", "--method", given]).method == expected
    assert explain.method_name("Guided-Backprop") == "guided_backprop"


def test_output_folder_is_refused_before_any_work(tmp_path, capsys):
    start = time.time()
    code, _, err = run(["explain", "shapes:0", "-m", "saliency", "-o", str(tmp_path)], capsys)
    one_line_error(code, err, "is a folder", "explanation.png")
    assert list(tmp_path.iterdir()) == []  # no .tmp file left
    code, _, err = run(["explain", "shapes:0", "-m", "saliency", "-o", str(tmp_path / "no" / "x.png")], capsys)
    one_line_error(code, err, "there is no folder")
    assert time.time() - start < 30  # refused before loading a model (a loose bound: a loaded CI machine)


@pytest.mark.parametrize("name", ["out.xyz", "out"])
def test_unknown_figure_extension_is_refused(tmp_path, capsys, name):
    code, _, err = run(["explain", "shapes:0", "-m", "saliency", "-o", str(tmp_path / name)], capsys)
    one_line_error(code, err, ".png", ".pdf")
    assert list(tmp_path.iterdir()) == []


def test_pdf_and_svg_are_written_in_their_format(tmp_path, capsys):
    for name, magic in (("out.pdf", b"%PDF"), ("out.svg", b"<?xml"), ("out.png", b"\x89PNG")):
        code, out, err = run(["explain", "shapes:0", "-m", "saliency", "-o", str(tmp_path / name)], capsys)
        assert code == 0, err
        assert (tmp_path / name).read_bytes().startswith(magic), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pdf", "out.png", "out.svg"]


def test_shapes_spec_must_be_a_number(capsys, tmp_path):
    code, _, err = run(["explain", "shapes:abc", "-m", "saliency", "-o", str(tmp_path / "x.png")], capsys)
    one_line_error(code, err, "shapes:3")


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels, with almost no data: a decompression bomb to Pillow."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_one_line(tmp_path, capsys):
    bomb = _png_header(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(ValueError, match="too large to open safely"):
        data.load_image(bomb)
    code, _, err = run(["explain", str(bomb), "-m", "saliency", "-o", str(tmp_path / "x.png")], capsys)
    one_line_error(code, err, "too large", str(bomb))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.png"]


@pytest.mark.parametrize("bad", [np.zeros((0, 0, 3)), np.zeros((0, 5)), np.zeros((4, 0, 3), np.uint8)])
def test_load_image_of_an_empty_array(bad):
    with pytest.raises(ValueError, match="the image is empty"):
        data.load_image(bad, 96)


def test_load_image_rules():
    assert data.load_image(np.full((4, 4), 1, np.uint8))[0, 0, 0] == 1  # integers are [0, 255], never rescaled
    assert data.load_image(np.ones((4, 4), bool))[0, 0, 0] == 255  # a mask: True is white
    with pytest.raises(ValueError, match="NaN"):
        data.load_image(np.full((4, 4, 3), np.nan))


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home" / ".keras"))
    monkeypatch.delenv("LABKIT_VGG16_WEIGHTS", raising=False)
    monkeypatch.delenv("LABKIT_VGG16_SHA256", raising=False)
    return tmp_path / "home" / ".keras" / "models"


def test_sha256_is_checked_before_downloading(cache, capsys, monkeypatch):
    def no_download(*args):
        raise AssertionError("downloaded before checking --sha256")

    monkeypatch.setattr(models, "_download", no_download)
    code, _, err = run(["fetch", "vgg16", "--from", "http://127.0.0.1:9/w.h5", "--sha256", "xyz"], capsys)
    one_line_error(code, err, "64 hex digits", "'xyz'")
    assert not cache.exists() or list(cache.iterdir()) == []


def test_checksum_error_names_the_source(cache, capsys, tmp_path):
    src = tmp_path / "copy.h5"
    src.write_bytes(b"not the weights")
    code, _, err = run(["fetch", "vgg16", "--from", str(src), "--sha256", "0" * 64], capsys)
    one_line_error(code, err, f"checksum mismatch for {src}")
    assert ".part" not in err and list(cache.iterdir()) == []


def test_ctrl_c_during_fetch(cache, capsys, monkeypatch):
    def interrupted(url, out, timeout, progress):
        out.write(b"x" * 1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_download", interrupted)
    code, _, err = run(["fetch", "vgg16", "--from", "http://127.0.0.1:9/w.h5"], capsys)
    assert code == 130 and err.strip() == "labkit fetch: interrupted"
    assert list(cache.iterdir()) == []


def test_stale_partial_files_are_removed_by_the_next_fetch(cache, tmp_path):
    cache.mkdir(parents=True)
    stale = cache / f".{models.VGG16_FILE}.abc123.part"
    fresh = cache / f".{models.VGG16_FILE}.def456.part"  # another fetch still running
    other = cache / "resnet50.h5"
    for p in (stale, fresh, other):
        p.write_bytes(b"partial")
    old = time.time() - 2 * models.STALE_PART_SECONDS
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    src = tmp_path / "w.h5"
    src.write_bytes(b"weights")
    models.fetch_vgg16(str(src), sha256=models.sha256_of(src), progress=False)
    assert sorted(p.name for p in cache.iterdir()) == sorted([fresh.name, other.name, models.VGG16_FILE])


def test_os_errors_are_one_line(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where Keras' cache folder should be")
    monkeypatch.setenv("KERAS_HOME", str(blocker))
    src = tmp_path / "w.h5"
    src.write_bytes(b"weights")
    code, _, err = run(["fetch", "vgg16", "--from", str(src), "--sha256", models.sha256_of(src)], capsys)
    one_line_error(code, err, str(blocker))


def test_info_tells_an_unusable_file(cache, capsys, monkeypatch, tmp_path):
    bad = tmp_path / "garbage.h5"
    bad.write_bytes(b"garbage" * 100)
    monkeypatch.setenv("LABKIT_VGG16_WEIGHTS", str(bad))
    code, out, err = run(["info"], capsys)
    assert code == 0, err
    line = next(l for l in out.splitlines() if l.startswith("vgg16"))
    assert "UNUSABLE" in line and str(bad) in line


def test_a_bug_keeps_its_traceback(monkeypatch):
    def bug(args):
        raise TypeError("a genuine bug")

    monkeypatch.setattr(explain, "run", bug)
    with pytest.raises(TypeError, match="a genuine bug"):
        cli.main(["explain", "shapes:0", "-m", "saliency"])
