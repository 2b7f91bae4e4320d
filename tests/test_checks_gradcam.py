"""checks.gradcam (stage 05): passes the solution, and gives each recognised mistake its own hint.

A mutant is a student function with one mistake built in; each must fail WITH the hint that names it.
The real part runs on an untrained minivgg: the check compares with labkit.gradcam whatever the weights.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import labkit  # noqa: F401  (pins the Keras backend)
from labkit import data, gradcam as lkgc, models
# the module, not the function labkit.checks exports under the same name
G = importlib.import_module("labkit.checks.gradcam")
from labkit.checks.gradcam import gradcam as check_gradcam


def solution(activations, gradients):
    """The notebook's solution (solutions/05_gradcam.ipynb)."""
    alphas = gradients.mean(axis=(1, 2))  # (N, K): one weight per image and channel
    weighted = np.einsum("nhwk,nk->nhw", activations, alphas)  # sum_k alpha_k A^k
    return np.maximum(weighted, 0)  # only what raises the class score


def torch_solution(activations, gradients):
    """Correct, written with torch and a keepdims broadcast: accepted."""
    import torch

    a, g = torch.as_tensor(activations), torch.as_tensor(gradients)
    return torch.relu((a * g.mean(dim=(1, 2), keepdim=True)).sum(dim=3))


def _combine(a, alphas):
    return np.einsum("nhwk,nk->nhw", a, alphas)


MISTAKES = {
    "alphas over channels": (lambda a, g: np.maximum((a * g.mean(axis=-1, keepdims=True)).sum(-1), 0), G.HINT_CHANNELS),
    "alphas over the batch": (lambda a, g: np.maximum(np.einsum("nhwk,k->nhw", a, g.mean(axis=(0, 1, 2))), 0), G.HINT_BATCH),
    "no relu": (lambda a, g: _combine(a, g.mean(axis=(1, 2))), G.HINT_RELU),
    "abs instead of relu": (lambda a, g: np.abs(_combine(a, g.mean(axis=(1, 2)))), None),  # generic hint
    "relu on the alphas": (lambda a, g: np.maximum(_combine(a, np.maximum(g.mean(axis=(1, 2)), 0)), 0), G.HINT_RELU_ALPHAS),
    "max instead of mean": (lambda a, g: np.maximum(_combine(a, g.max(axis=(1, 2))), 0), G.HINT_MAX),
    "sum instead of mean": (lambda a, g: np.maximum(_combine(a, g.sum(axis=(1, 2))), 0), G.HINT_SUM),
    "alphas from the activations": (lambda a, g: np.maximum(_combine(a, a.mean(axis=(1, 2))), 0), G.HINT_ACTIVATIONS),
    "weighted gradients": (lambda a, g: np.maximum(_combine(g, g.mean(axis=(1, 2))), 0), G.HINT_WEIGHTED_GRADIENTS),
    "no pooling": (lambda a, g: np.maximum((a * g).sum(-1), 0), G.HINT_NO_POOLING),
    "normalised": (lambda a, g: (lambda m: m / m.max(axis=(1, 2), keepdims=True))(solution(a, g)), G.HINT_NORMALISED),
    "normalised batch": (lambda a, g: (lambda m: m / m.max())(solution(a, g)), G.HINT_NORMALISED),
    "in place": (lambda a, g: np.maximum(np.multiply(a, g.mean(axis=(1, 2), keepdims=True), out=a).sum(-1), 0), G.HINT_INPLACE),
}


@pytest.mark.parametrize("fn", [solution, torch_solution], ids=["numpy", "torch"])
def test_the_solution_passes(fn, capsys):
    assert check_gradcam(fn) is True
    out = capsys.readouterr().out
    assert out.startswith("PASS [05 Grad-CAM]") and out.count("\n") == 1


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_mistake_gets_its_hint(name, capsys):
    fn, hint = MISTAKES[name]
    assert check_gradcam(fn) is False
    out = capsys.readouterr().out
    if hint is None:
        assert out.startswith("HINT [05 Grad-CAM]") and "differs from the reference" in out, out
    else:
        assert out == f"HINT [05 Grad-CAM] {hint}\n"


def test_the_mutants_are_distinguishable_on_the_cases():
    """Every mutant differs from the reference and from every other hint's answer (else hints would be wrong)."""
    for a, g in G._cases():
        ref = G.reference(a, g)
        np.testing.assert_allclose(ref, solution(a, g), rtol=1e-12)  # the reference IS the formula
        answers = G.mutants(a, g)
        for hint, wrong in answers:
            assert not G.close(wrong, ref), hint
            for other, wrong2 in answers:
                if other != hint:
                    assert not G.close(wrong, wrong2), (hint, other)
        assert (ref == 0).any() and (ref > 0).any()  # the ReLU matters on every case
    a, _ = G._cases()[0]
    assert len(set(a.shape)) == 4  # N, h, w, K all different: wrong axes cannot hide


def test_wrong_shapes_get_a_shape_hint(capsys):
    expected = {
        # NCHW habit: the mean over axes (2, 3) of an NHWC array averages over w and K
        (lambda a, g: np.maximum((a * g.mean(axis=(2, 3), keepdims=True)).sum(axis=1), 0)): "has shape (2, 4, 5), expected (2, 3, 4)",
        (lambda a, g: np.maximum(a * g.mean(axis=(1, 2), keepdims=True), 0)): "expected (2, 3, 4): one map per image",
        (lambda a, g: solution(a, g)[0]): "has shape (3, 4), expected (2, 3, 4)",
    }
    for fn, text in expected.items():
        assert check_gradcam(fn) is False
        out = capsys.readouterr().out
        assert out.startswith("HINT [05 Grad-CAM]") and text in out, out


@pytest.fixture(scope="module")
def minivgg():
    return models.load("minivgg", weights=None)


@pytest.fixture(scope="module")
def images():
    return data.make_shapes(2, seed=3).images


def test_on_the_real_activations_and_gradients(minivgg, images, capsys):
    assert check_gradcam(solution, minivgg, images) is True
    out = capsys.readouterr().out
    assert "on minivgg's block5_conv3 (2 image(s), 6x6, K=128) it gives labkit.gradcam's maps" in out
    # what the check hands the student is what labkit.gradcam uses: the same maps come out
    a, g = G._activations_and_gradients(minivgg, images)
    assert a.shape == g.shape == (2, 6, 6, 128)
    np.testing.assert_allclose(solution(a, g), lkgc.gradcam(minivgg, images).raw, rtol=1e-4, atol=1e-6)


def test_a_mistake_on_the_real_maps_only(minivgg, images, capsys):
    """A function that is right on small arrays but breaks on big ones is still caught, naming the layer."""
    def breaks_on_big(a, g):
        out = solution(a, g)
        return out if a.shape[-1] < 100 else out + 1.0

    assert check_gradcam(breaks_on_big, minivgg, images) is False
    assert "on minivgg's block5_conv3 differs from the reference" in capsys.readouterr().out


def test_bad_calls_raise(minivgg):
    with pytest.raises(TypeError, match="Backbone"):
        check_gradcam(solution, "minivgg", np.zeros((96, 96, 3), np.uint8))
    with pytest.raises(TypeError, match="both backbone and images"):
        check_gradcam(solution, minivgg)
