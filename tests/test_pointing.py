"""The pointing game, and whether labkit's maps point at the object on minivgg."""

import numpy as np
import pytest

from labkit import data, models, pointing


def test_hits_by_hand():
    masks = np.zeros((3, 10, 10), bool)
    masks[:, 2:4, 2:4] = True
    maps = np.zeros((3, 10, 10))
    maps[0, 3, 3] = 1  # inside
    maps[1, 3, 6] = 1  # 3 px right of the mask
    maps[2, 9, 9] = 1  # far away
    assert pointing.hits(maps, masks, tolerance=0).tolist() == [True, False, False]
    assert pointing.hits(maps, masks, tolerance=3).tolist() == [True, True, False]
    assert pointing.pointing_accuracy(maps, masks, 3) == pytest.approx(2 / 3)


def test_centre_baseline_by_hand():
    masks = np.zeros((2, 9, 9), bool)
    masks[0, 4, 4] = True  # on the centre
    masks[1, 0, 0] = True
    assert pointing.centre_baseline(masks, tolerance=0) == 0.5


def test_shape_mismatch_is_one_line():
    with pytest.raises(ValueError, match="upsample the maps"):
        pointing.hits(np.zeros((1, 4, 4)), np.zeros((1, 8, 8), bool))


def test_cell_hits_by_hand():
    masks = np.zeros((2, 8, 8), bool)
    masks[:, 0:2, 5:7] = True  # top-right block of a 2 x 2 grid of 4 x 4 cells
    raw = np.zeros((2, 2, 2))
    raw[0, 0, 1] = 1  # strongest cell: top right
    raw[1, 1, 0] = 1  # bottom left
    assert pointing.cell_hits(raw, masks, tolerance=0).tolist() == [True, False]


@pytest.fixture(scope="module")
def scored():
    """Grad-CAM and CAM on correctly classified fresh test shapes, at pixel and at cell level."""
    from labkit import cam, gradcam
    from labkit.explain import cam_head_for

    backbone = models.load("minivgg")
    test = data.make_shapes(150, seed=1)
    correct = backbone.predict(test.images).argmax(1) == test.labels
    images, masks = test.images[correct], test.masks[correct]
    head = cam_head_for(backbone, None, progress=False)
    out = {"centre": pointing.centre_baseline(masks)}
    for name, e in (("gradcam", gradcam.gradcam(backbone, images)), ("cam", cam.cam(head, images))):
        out[name] = pointing.pointing_accuracy(e.maps, masks)
        out[name + " cells"] = pointing.cell_hits(e.raw, masks).mean()
    centre_cell = np.zeros((len(masks), 6, 6))
    centre_cell[:, 2, 2] = 1
    out["centre cells"] = pointing.cell_hits(centre_cell, masks).mean()
    return out


@pytest.mark.parametrize("method", ["gradcam", "cam"])
def test_maps_point_at_the_object(scored, method):
    # The bar: the upsampled map's maximum within 3 px of the object in >= 0.9 of the correctly
    # classified images, where pointing at the image centre scores about 0.05.
    assert scored[method] >= 0.9 and scored["centre"] < 0.15
    # At the maps' own 6 x 6 resolution the strongest cell is on the object too.
    assert scored[method + " cells"] >= 0.9 > scored["centre cells"] + 0.3
