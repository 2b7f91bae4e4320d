"""Property-based: over image shapes, dtypes and value ranges, every input either gives the right map or raises one
clear ValueError — never a wrong map. The rule (Backbone.check_images): (H, W, 3) or (N, H, W, 3) at the input size,
N >= 1, real numbers, finite, in [0, 255], and not floats that all lie in [0, 1] (unless all 0)."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import keras_tiny, twin_of
from labkit import gradcam, occlusion, saliency

SIZE = 8
BB = keras_tiny(size=SIZE, classes=3, seed=4)
TWIN = twin_of(BB)  # the same network in plain torch, fed preprocessed pixels directly: the reference

DTYPES = [np.uint8, np.int16, np.int64, np.float16, np.float32, np.float64, np.bool_]
SHAPES = st.one_of(
    st.just((SIZE, SIZE, 3)),
    st.integers(0, 3).map(lambda n: (n, SIZE, SIZE, 3)),
    st.sampled_from([(SIZE, SIZE), (SIZE, SIZE, 4), (SIZE, SIZE, 1), (1, SIZE + 1, SIZE, 3), (2, 1, SIZE, SIZE, 3)]),
)
RANGES = st.sampled_from([(0.0, 1.0), (0.0, 255.0), (-5.0, 300.0), (100.0, 200.0), (0.0, 0.0)])


@st.composite
def images(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(SHAPES)
    lo, hi = draw(RANGES)
    if dtype == np.bool_:
        elements = st.booleans()
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        elements = st.integers(max(int(lo), int(info.min)), min(int(hi), int(info.max)))
    else:
        special = draw(st.booleans())
        finite = st.floats(lo, hi, width=np.finfo(dtype).bits)
        elements = st.one_of(finite, st.sampled_from([np.nan, np.inf, -np.inf])) if special else finite
    return draw(hnp.arrays(dtype, shape, elements=elements))


def acceptable(x: np.ndarray) -> bool:
    """The documented rule, written independently of labkit's code."""
    batch = x[None] if x.ndim == 3 else x
    if batch.ndim != 4 or batch.shape[1:] != (SIZE, SIZE, 3) or batch.shape[0] == 0:
        return False
    if x.dtype == np.bool_:
        return False
    v = batch.astype(np.float64)
    if not np.isfinite(v).all() or v.min() < 0 or v.max() > 255:
        return False
    return not (np.issubdtype(x.dtype, np.floating) and 0 < v.max() <= 1)


def reference_saliency(x: np.ndarray) -> np.ndarray:
    batch = x[None] if x.ndim == 3 else x
    pre = torch.from_numpy(batch.astype(np.float32) / 127.5 - 1.0)
    return saliency.saliency(TWIN, pre).maps


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images())
def test_every_input_is_explained_right_or_refused_in_one_line(x):
    try:
        got = saliency.saliency(BB, x)
    except ValueError as exc:
        assert not acceptable(x), f"refused an acceptable input: {exc}"
        assert "\n" not in str(exc) and ":" in str(exc)  # one line, with the fix after the colon
        return
    assert acceptable(x), "explained an input the rule refuses"
    np.testing.assert_allclose(got.maps, reference_saliency(x), rtol=1e-4, atol=1e-6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images())
def test_gradcam_and_occlusion_follow_the_same_rule(x):
    for method in (lambda: gradcam.gradcam(BB, x), lambda: occlusion.occlusion(BB, x, size=4, stride=4, progress=False)):
        try:
            e = method()
        except ValueError as exc:
            assert not acceptable(x) and "\n" not in str(exc)
            continue
        assert acceptable(x) and np.isfinite(e.maps).all() and e.maps.shape[1:] == (SIZE, SIZE)


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.integers(-3, 5), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3),
                 st.lists(st.integers(-1, 3), min_size=0, max_size=3), st.none()))
def test_targets_are_valid_class_indices_or_refused(target):
    x = np.full((2, SIZE, SIZE, 3), 128, np.uint8)
    valid = target is None or (
        not isinstance(target, (bool, float, str))
        and all(0 <= t < 3 for t in np.atleast_1d(target).tolist())
        and np.size(target) in (1, 2)
        and all(isinstance(t, int) for t in np.atleast_1d(target).tolist())
    )
    try:
        e = saliency.saliency(BB, x, target)
    except ValueError as exc:
        assert not valid, f"refused a valid target {target!r}: {exc}"
        assert "\n" not in str(exc)
        return
    assert valid, f"explained with target {target!r}"
    expected = e.targets if target is None else np.broadcast_to(np.asarray(target), (2,))
    assert e.targets.tolist() == list(expected)
