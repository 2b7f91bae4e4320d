"""The procedural dataset, the offline photos and the image loaders."""

import numpy as np
import pytest
from PIL import Image

from labkit import data


def test_same_seed_same_batch_and_slices_agree():
    a = data.make_shapes(16, seed=7)
    b = data.make_shapes(16, seed=7)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.masks, b.masks)
    tail = data.make_shapes(6, seed=7, start=10)  # image i depends only on (seed, i)
    assert np.array_equal(tail.images, a.images[10:])
    other = data.make_shapes(16, seed=8)
    assert not np.array_equal(other.images, a.images)


def test_shapes_content():
    s = data.make_shapes(300, seed=0)
    assert s.images.shape == (300, data.IMAGE_SIZE, data.IMAGE_SIZE, 3) and s.images.dtype == np.uint8
    assert s.masks.shape == (300, data.IMAGE_SIZE, data.IMAGE_SIZE) and s.masks.dtype == bool
    assert set(np.unique(s.labels)) == set(range(len(data.CLASSES)))  # every class occurs
    area = s.masks.mean(axis=(1, 2))
    assert area.min() > 0.01 and area.max() < 0.25  # one visible object, never the whole frame
    # Pixels inside the mask differ from the surround: the object is visible.
    inside = np.array([img[m].mean(0) for img, m in zip(s.images, s.masks)])
    outside = np.array([img[~m].mean(0) for img, m in zip(s.images, s.masks)])
    assert np.median(np.abs(inside - outside).max(1)) > 40


def test_centre_baseline_is_low():
    """'Always point at the centre' must be a weak baseline for the pointing game."""
    s = data.make_shapes(500, seed=3)
    c, tol = data.IMAGE_SIZE // 2, 3
    hits = s.masks[:, c - tol : c + tol + 1, c - tol : c + tol + 1].any(axis=(1, 2)).mean()
    assert hits < 0.2


def test_bad_arguments():
    with pytest.raises(ValueError, match="n >= 0"):
        data.make_shapes(-1)
    with pytest.raises(ValueError, match="size >= 64"):
        data.make_shapes(2, size=32)


@pytest.mark.parametrize("name", sorted(data.SAMPLE_IMAGES))
def test_sample_images(name):
    img = data.sample_image(name)
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and min(img.shape[:2]) >= 200


def test_unknown_sample_image():
    with pytest.raises(ValueError, match="choose one of .*chelsea"):
        data.sample_image("dog")


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "I", "F", "LA", "CMYK", "1"])
def test_load_image_any_mode(tmp_path, mode):
    rgb = data.sample_image("chelsea")[:120, :150]
    img = Image.fromarray(rgb)
    if mode == "I;16":
        img = Image.fromarray((np.asarray(img.convert("L")).astype(np.uint16) * 257))
    elif mode in ("I", "F"):
        img = img.convert("L").convert(mode)
    else:
        img = img.convert(mode)
    ext = ".tif" if mode in ("I;16", "I", "F", "CMYK") else ".png"
    path = tmp_path / f"x{ext}"
    img.save(path)
    out = data.load_image(path, 96)
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    if mode in ("L", "I;16", "I", "F", "RGB"):
        # Grey and colour modes keep the brightness: compare with the original's mean grey level.
        assert abs(out.mean() - rgb.mean()) < 12


def test_load_image_rgba_transparent_is_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)  # fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert (data.load_image(tmp_path / "t.png") == 255).all()


def test_load_image_arrays():
    grey = np.full((50, 40), 100, np.uint8)
    assert data.load_image(grey, (64, 64)).shape == (64, 64, 3)
    unit = np.full((8, 8, 3), 0.5, np.float32)  # floats in [0, 1]
    assert data.load_image(unit)[0, 0, 0] == 128
    with pytest.raises(ValueError, match="image array must be"):
        data.load_image(np.zeros((4, 4, 5)))


def test_load_image_missing_and_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image file at .*nope.jpg"):
        data.load_image(tmp_path / "nope.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read .*bad.jpg"):
        data.load_image(bad)


def _folder(root, spec):
    for cls, n in spec.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((30, 20, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.jpg")


def test_load_folder(tmp_path):
    _folder(tmp_path / "voc", {"dog": 2, "cat": 3})
    ds = data.load_folder(tmp_path / "voc", 64, progress=False)
    assert ds.class_names == ("cat", "dog")  # sorted folder names
    assert ds.images.shape == (5, 64, 64, 3) and list(ds.labels) == [0, 0, 0, 1, 1]


def test_load_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder at"):
        data.load_folder(tmp_path / "missing", 64)
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        data.load_folder(tmp_path / "flat", 64)
    _folder(tmp_path / "one", {"a": 1})
    (tmp_path / "one" / "empty").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        data.load_folder(tmp_path / "one", 64)
