"""`labkit explain`: every method, from the shell's point of view."""

import pytest
from PIL import Image

from labkit import cli, explain


@pytest.mark.parametrize("method", explain.METHODS)
def test_explain_writes_a_figure(method, tmp_path, capsys):
    out = tmp_path / f"{method}.png"
    assert cli.main(["explain", "shapes:2", "--method", method, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "top-5 predictions of minivgg" in printed and printed.count("p = ") == 5
    assert f"{method} map of" in printed
    with Image.open(out) as img:
        assert img.size[0] > 400 and img.size[1] > 200
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_explain_bad_class_is_one_line(tmp_path, capsys):
    assert cli.main(["explain", "shapes:0", "--method", "gradcam", "--class", "6", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "out of range" in err
    assert not (tmp_path / "x.png").exists()


def test_explain_missing_image(tmp_path, capsys):
    assert cli.main(["explain", str(tmp_path / "none.jpg"), "--method", "saliency"]) == 2
    assert "no image file at" in capsys.readouterr().err
