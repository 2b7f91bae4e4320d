"""Bad input to any method is one clear ValueError, found in one place (attribution.prepare / Backbone.check_images,
attribution.target_tensor), never a silent wrong map. Tiny Keras backbone and torch net: milliseconds per call."""

import numpy as np
import pytest
import torch

from labkit import cam, gradcam, guided_backprop, occlusion, saliency
from labkit.attribution import prepare, resolve_targets


def _methods(bb, twin, head):
    """Every method, called as a student calls it, on a Backbone (guided backprop through the torch twin)."""
    return {
        "saliency": lambda x, t=None: saliency.saliency(bb, x, t),
        "gradcam": lambda x, t=None: gradcam.gradcam(bb, x, t),
        "occlusion": lambda x, t=None: occlusion.occlusion(bb, x, t, size=4, stride=4, progress=False),
        "guided_gradcam": lambda x, t=None: guided_backprop.guided_gradcam(bb, x, t, twin=twin),
        "guided_backprop": lambda x, t=None: guided_backprop.guided_backprop(twin, bb.tensor(x), t, preprocessed=True),
        "cam": lambda x, t=None: cam.cam(head, x, t),
        "predict": lambda x, t=None: bb.predict(x),
    }


@pytest.fixture(scope="module")
def setup():
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from conftest import keras_tiny, twin_of

    bb = keras_tiny(size=8, classes=3, seed=1)
    head = cam.CAMHead.from_weights(bb, "conv2", np.random.default_rng(0).normal(size=(5, 3)), np.zeros(3))
    images = np.random.default_rng(2).integers(0, 256, size=(2, 8, 8, 3)).astype(np.uint8)
    return bb, twin_of(bb), head, images


def one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


METHODS = ("saliency", "gradcam", "occlusion", "guided_gradcam", "guided_backprop", "cam", "predict")


@pytest.mark.parametrize("method", METHODS)
def test_floats_in_0_1_are_refused_with_the_fix(setup, method):
    bb, twin, head, images = setup
    call = _methods(bb, twin, head)[method]
    one_line_value_error(lambda: call(images / 255.0), r"floats in \[0, 1\].*multiply by 255")
    call(images.astype(np.float64))  # the same pixels in [0, 255] as floats are fine
    call(np.zeros((1, 8, 8, 3), np.float32))  # all black is black in either convention


@pytest.mark.parametrize("method", METHODS)
def test_booleans_nan_inf_and_out_of_range_are_refused(setup, method):
    bb, twin, head, images = setup
    call = _methods(bb, twin, head)[method]
    one_line_value_error(lambda: call(images > 127), "boolean")
    for bad in (np.nan, np.inf, -np.inf):
        x = images.astype(np.float32)
        x[1, 3, 4, 2] = bad
        one_line_value_error(lambda: call(x), "NaN or infinite")
    # Preprocessed values given as pixels (the student forgot preprocessed=True): negative values
    one_line_value_error(lambda: call(bb.tensor(images).cpu().numpy()), r"pixels must be in \[0, 255\].*preprocessed=True")
    one_line_value_error(lambda: call(images.astype(np.float32) * 2), r"pixels must be in \[0, 255\]")


@pytest.mark.parametrize("method", METHODS)
def test_array_likes_everywhere_and_nothing_else(setup, method):
    bb, twin, head, images = setup
    call = _methods(bb, twin, head)[method]
    as_list = call([im.tolist() for im in images])
    as_array = call(images)
    if method == "predict":
        np.testing.assert_allclose(as_list, as_array, rtol=1e-6)
    else:
        np.testing.assert_allclose(as_list.maps, as_array.maps, rtol=1e-5, atol=1e-7)
    call(torch.from_numpy(images))  # a tensor of pixels too
    for bad in (None, "cat.jpg", {"a": 1}):
        one_line_value_error(lambda: call(bad), "must be an array")
    one_line_value_error(lambda: call([images[0], images[0][:4]]), r"same-sized")


def test_preprocessed_batch_is_checked_for_nan_but_not_range(setup):
    bb, twin, head, images = setup
    x = bb.tensor(images)
    saliency.saliency(bb, x, preprocessed=True)  # negative values are fine once preprocessed
    cam.cam(head, x, preprocessed=True)
    x[0, 0, 0, 0] = float("nan")
    for call in (lambda: saliency.saliency(bb, x, preprocessed=True), lambda: saliency.saliency(twin, x),
                 lambda: cam.cam(head, x, preprocessed=True), lambda: gradcam.gradcam(twin, x)):
        one_line_value_error(call, "NaN or infinite")


def test_top_k_refuses_nan_instead_of_nan_probabilities(setup):
    bb, _, _, images = setup
    x = images[0].astype(np.float32)
    x[0, 0, 0] = np.nan
    one_line_value_error(lambda: bb.top_k(x), "NaN or infinite")


@pytest.mark.parametrize("fill", [np.nan, np.inf, [0.0, np.nan, 0.0]])
def test_occlusion_fill_must_be_finite(setup, fill):
    bb, _, _, images = setup
    one_line_value_error(lambda: occlusion.occlusion(bb, images, size=4, stride=4, fill=fill, progress=False),
                         "fill must be finite")


BAD_TARGETS = [2.7, 1.0, True, np.bool_(True), torch.tensor(1.5), torch.tensor(True), np.array([0.0, 1.0]),
               [1, 2.5], "circle", [None, 1], object()]


@pytest.mark.parametrize("target", BAD_TARGETS, ids=repr)
@pytest.mark.parametrize("method", [m for m in METHODS if m != "predict"])
def test_targets_are_integers_only(setup, method, target):
    bb, twin, head, images = setup
    call = _methods(bb, twin, head)[method]
    match = "give its index" if isinstance(target, str) else r"class index \(an int\) or one per image"
    one_line_value_error(lambda: call(images, target), match)


@pytest.mark.parametrize("target, expected", [(2, [2, 2]), (np.int64(1), [1, 1]), ([0, 2], [0, 2]),
                                              (np.array([2, 1], np.uint8), [2, 1]), (torch.tensor([1, 0]), [1, 0]),
                                              (torch.tensor(2), [2, 2])])
def test_integer_targets_of_every_kind_work(setup, target, expected):
    bb, twin, head, images = setup
    for name, call in _methods(bb, twin, head).items():
        if name != "predict":
            assert call(images, target).targets.tolist() == expected, name


def test_resolve_targets_refuses_floats_and_bools():
    scores = torch.zeros(2, 3)
    for bad in (2.7, True, torch.tensor(1.5), "circle"):
        with pytest.raises(ValueError):
            resolve_targets(bad, scores)


def test_torch_model_batch_is_checked(setup):
    _, twin, _, _ = setup
    for bad in (None, "x", np.zeros((2, 8, 8, 3), bool)):
        with pytest.raises(ValueError):
            prepare(twin, bad)
    assert prepare(twin, [[[[0.5] * 3] * 8] * 8]).shape == (1, 8, 8, 3)  # a nested list is an array-like
