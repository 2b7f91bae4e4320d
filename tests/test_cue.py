"""The spurious tag of stage 09 (labkit.data.add_cue, make_cued_shapes): where it goes, and nothing else changes."""

import numpy as np
import pytest

from labkit import data


def test_add_cue_paints_a_checkerboard_in_the_corner_only():
    img = np.full((96, 96, 3), 100, np.uint8)
    for corner in range(4):
        out = data.add_cue(img, corner)
        changed = (out != img).any(axis=2)
        assert np.array_equal(changed, data.cue_mask(corner))  # every tag pixel is black or white, nothing else moved
        rows, cols = data.cue_box(corner)
        tag = out[rows, cols, 0]
        assert tag.shape == (data.CUE_SIZE, data.CUE_SIZE) and set(np.unique(tag)) == {0, 255}
        assert tag[0, 0] == 255 and tag[0, 2] == 0 and tag[2, 2] == 255  # 2 px cells
    assert img.max() == 100  # the input is not touched
    corners = {0: (0, 0), 1: (0, 95), 2: (95, 95), 3: (95, 0)}
    for corner, (y, x) in corners.items():
        ys, xs = np.nonzero(data.cue_mask(corner))
        assert min(abs(ys - y)) == data.CUE_MARGIN and min(abs(xs - x)) == data.CUE_MARGIN


def test_add_cue_one_corner_per_image_and_bad_input():
    imgs = np.zeros((3, 96, 96, 3), np.uint8)
    out = data.add_cue(imgs, [0, 2, 3])
    for k, corner in enumerate([0, 2, 3]):
        assert np.array_equal((out[k] != 0).any(axis=2), data.cue_mask(corner) & ((out[k] != 0).any(axis=2)))
        assert out[k][data.cue_box(corner)].max() == 255
    with pytest.raises(ValueError, match="corner must be 0"):
        data.add_cue(imgs, 4)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        data.add_cue(np.zeros((96, 96)), 0)


def test_cued_shapes_are_the_same_images_with_only_the_tag_added():
    plain = data.make_shapes(60, seed=5, start=10)
    for mode in ("train", "none", "all"):
        cued = data.make_cued_shapes(60, seed=5, start=10, cue=mode)
        assert np.array_equal(cued.labels, plain.labels) and np.array_equal(cued.masks, plain.masks)
        differs = (cued.images != plain.images).any(axis=3)
        for k in range(60):
            expected = data.cue_mask(cued.corners[k]) if cued.cued[k] else np.zeros((96, 96), bool)
            assert not (differs[k] & ~expected).any()  # nothing outside the tag changed
        assert cued.cued.all() if mode == "all" else (not cued.cued.any() if mode == "none" else True)
    # Index i depends only on (seed, i): a slice gives the same tags.
    whole = data.make_cued_shapes(40, seed=5)
    part = data.make_cued_shapes(10, seed=5, start=30)
    assert np.array_equal(whole.images[30:], part.images) and np.array_equal(whole.cued[30:], part.cued)


def test_the_training_correlation():
    shapes = data.make_cued_shapes(600, seed=2, cue="train", p_class=0.9, p_other=0.05)
    target = shapes.labels == data.CLASSES.index(data.CUE_CLASS)
    assert 0.8 < shapes.cued[target].mean() <= 1.0 and shapes.cued[~target].mean() < 0.1
    other = data.make_cued_shapes(600, seed=2, cue="train", cue_class="star", p_class=1.0, p_other=0.0)
    assert np.array_equal(other.cued, other.labels == data.CLASSES.index("star"))
    with pytest.raises(ValueError, match="cue must be"):
        data.make_cued_shapes(2, cue="some")
    with pytest.raises(ValueError, match="unknown cue_class"):
        data.make_cued_shapes(2, cue_class="heart")


def test_the_tag_avoids_the_object_where_a_corner_is_free():
    shapes = data.make_cued_shapes(200, seed=7, cue="all")
    covered = data.free_corners(shapes.masks)
    chosen = covered[np.arange(200), shapes.corners]
    assert np.array_equal(chosen, covered.min(axis=1))
    assert len(set(shapes.corners.tolist())) == 4  # every corner is used
