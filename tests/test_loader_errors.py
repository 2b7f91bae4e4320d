"""Every weights/metadata file a user can break gives one line naming the file and the fix, and `labkit info`
(models.backbone_state) tells a usable file from an unusable one. HOME and KERAS_HOME point at tmp folders."""

import hashlib
import json
from pathlib import Path

import pytest

from labkit import models

REPO = Path(__file__).resolve().parent.parent
MINIVGG_H5 = REPO / "data" / models.MINIVGG_WEIGHTS


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home" / ".keras"))
    monkeypatch.delenv("LABKIT_VGG16_WEIGHTS", raising=False)
    monkeypatch.delenv("LABKIT_VGG16_SHA256", raising=False)
    monkeypatch.setenv("LABKIT_VGG16_URL", "http://127.0.0.1:9/none.h5")  # never the network
    return tmp_path


def garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89HDF\r\n not really" + bytes(range(256)) * 20)
    return path


def one_line(info, *needles):
    msg = str(info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg


def test_corrupt_vgg16_named_by_env(home, monkeypatch):
    bad = garbage(home / "garbage.h5")
    monkeypatch.setenv("LABKIT_VGG16_WEIGHTS", str(bad))
    assert "UNUSABLE" in models.backbone_state("vgg16") and str(bad) in models.backbone_state("vgg16")
    with pytest.raises(models.WeightsError) as info:
        models.load("vgg16")
    one_line(info, str(bad), "LABKIT_VGG16_WEIGHTS")


def test_corrupt_vgg16_in_keras_cache(home):
    bad = garbage(models.vgg16_cached_path())
    assert str(bad).startswith(str(home))
    state = models.backbone_state("vgg16")
    assert state.startswith("cached at") and "UNUSABLE" in state and "labkit fetch vgg16" in state
    with pytest.raises(models.WeightsError) as info:
        models.load("vgg16")
    one_line(info, str(bad), "labkit fetch vgg16")


def test_minivgg_weights_given_as_vgg16_are_named(home, monkeypatch):
    with pytest.raises(models.WeightsError) as info:
        models.load("vgg16", weights=str(MINIVGG_H5))
    one_line(info, str(MINIVGG_H5), "not VGG16's weights")
    monkeypatch.setenv("LABKIT_VGG16_WEIGHTS", str(MINIVGG_H5))
    assert "UNUSABLE" in models.backbone_state("vgg16")


def test_a_usable_state_says_so(home):
    assert models.backbone_state("minivgg") == "bundled"
    assert models.backbone_state("vgg16").startswith("missing")


@pytest.fixture()
def data_dir(tmp_path, monkeypatch):
    """A copy of data/ that a test may break."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / models.MINIVGG_META).write_text((REPO / "data" / models.MINIVGG_META).read_text())
    (folder / models.MINIVGG_WEIGHTS).write_bytes(MINIVGG_H5.read_bytes())
    monkeypatch.setattr(models, "DATA_DIR", folder)
    return folder


def test_minivgg_bad_content_with_matching_sha256(data_dir):
    bad = garbage(data_dir / models.MINIVGG_WEIGHTS)
    meta = json.loads((data_dir / models.MINIVGG_META).read_text())
    meta["sha256"] = hashlib.sha256(bad.read_bytes()).hexdigest()
    (data_dir / models.MINIVGG_META).write_text(json.dumps(meta))
    assert "UNUSABLE" in models.backbone_state("minivgg")
    with pytest.raises(models.WeightsError) as info:
        models.load("minivgg")
    one_line(info, str(bad), "git checkout data/")


def test_minivgg_metadata_missing_a_key_or_not_json(data_dir):
    meta_path = data_dir / models.MINIVGG_META
    meta = json.loads(meta_path.read_text())
    del meta["widths"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(models.WeightsError) as info:
        models.load("minivgg")
    one_line(info, str(meta_path), "widths", "git checkout data/")
    assert "UNUSABLE" in models.backbone_state("minivgg")
    meta_path.write_text('{"classes": [')
    with pytest.raises(models.WeightsError) as info:
        models.load("minivgg")
    one_line(info, str(meta_path), "not valid JSON", "git checkout data/")
    assert "UNUSABLE" in models.backbone_state("minivgg")
