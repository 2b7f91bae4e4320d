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


@pytest.fixture(scope="module")
def scored():
    from labkit import cam, gradcam
    from labkit.explain import cam_head_for

    backbone = models.load("minivgg")
    test = data.make_shapes(150, seed=1)
    correct = backbone.predict(test.images).argmax(1) == test.labels
    images, masks = test.images[correct], test.masks[correct]
    head = cam_head_for(backbone, None, progress=False)
    return {
        "gradcam": pointing.pointing_accuracy(gradcam.gradcam(backbone, images).maps, masks),
        "cam": pointing.pointing_accuracy(cam.cam(head, images).maps, masks),
        "centre": pointing.centre_baseline(masks),
    }


def test_gradcam_points_at_the_object(scored):
    assert scored["gradcam"] >= 0.90 > scored["centre"] + 0.5


def test_cam_points_at_the_object(scored):
    assert scored["cam"] >= 0.90 > scored["centre"] + 0.5
