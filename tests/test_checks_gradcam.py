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


# -- the split exercise: checks.gradcam_split ------------------------------------------------------------------

import keras  # noqa: E402
import torch  # noqa: E402


def make_split(*, score_used=None, leaf=True, a_at=None, head="right", select="each", ret="right"):
    """A student's split_gradients with (at most) one mistake built in; the defaults are the solution."""

    def split_gradients(model, x, classes, layer="block5_conv3", score="logit"):
        conv = model.get_layer(layer)
        i = model.layers.index(conv)
        after = model.layers[i + 1 :]
        a_layer = model.get_layer(a_at) if a_at else conv
        modelA = keras.Model(model.inputs, a_layer.output)
        layers = {"right": after, "conv twice": [conv] + after, "pool skipped": after[1:],
                  "pool twice": [after[0]] + after}[head]
        inputP = keras.Input(a_layer.output.shape[1:])
        h = inputP
        for l in layers[:-1]:
            h = l(h)
        last = layers[-1]
        s = score if score_used is None else score_used
        out = last(h) if s == "probability" else keras.ops.matmul(h, last.kernel) + last.bias
        modelP = keras.Model(inputP, out)
        if ret == "wrt input":
            x = x.clone().requires_grad_(True)
            featureMaps = modelA(x)
        elif leaf:
            with torch.no_grad():
                featureMaps = modelA(x)
            featureMaps.requires_grad_(True)
        else:  # the course's line, as is: on a model that is not frozen this is not a leaf
            featureMaps = modelA(x).requires_grad_(True)
        scores = modelP(featureMaps)
        c = torch.as_tensor(classes)
        n = len(c)
        chosen = {"each": lambda: scores[torch.arange(n), c].sum(), "first": lambda: scores[0, c[0]],
                  "one class": lambda: scores[:, c[0]].sum(), "all listed": lambda: scores[:, c].sum(),
                  "all classes": lambda: scores.sum(), "mean": lambda: scores[torch.arange(n), c].mean()}[select]()
        chosen.backward()
        if ret == "wrt input":
            return featureMaps.detach(), x.grad
        if ret == "swapped":
            return featureMaps.grad, featureMaps.detach()
        if ret == "A as grad":
            return featureMaps.detach(), featureMaps.detach().clone()
        return featureMaps.detach(), featureMaps.grad

    return split_gradients


SPLIT_MISTAKES = {
    "requires_grad_ on a non-leaf": (make_split(leaf=False), G.HINT_GRAD_NONE),
    "probability instead of logit": (make_split(score_used="probability"), G.HINT_PROBABILITY),
    "logit instead of probability": (make_split(score_used="logit"), G.HINT_LOGIT),
    "conv applied twice": (make_split(head="conv twice"), G.HINT_CONV_TWICE.format(layer="conv2", next="pool")),
    "pool skipped": (make_split(head="pool skipped"), G.HINT_POOL_SKIPPED.format(layer="conv2", next="pool")),
    "pool twice": (make_split(head="pool twice"), G.HINT_POOL_TWICE.format(layer="conv2", next="pool")),
    "A from the pool": (make_split(a_at="pool", head="pool skipped"),
                        G.HINT_A_LAYER.format(other="pool", shape=(3, 4, 4, 6), layer="conv2")),
    "first image only": (make_split(select="first"), G.HINT_FIRST_ONLY),
    "one class for all": (make_split(select="one class"), G.HINT_ONE_CLASS),
    "all listed classes": (make_split(select="all listed"), G.HINT_ALL_LISTED),
    "all classes": (make_split(select="all classes"), G.HINT_ALL_CLASSES),
    "mean over images": (make_split(select="mean"), G.HINT_MEAN_IMAGES),
    "gradient w.r.t. the input": (make_split(ret="wrt input"), G.HINT_WRT_INPUT),
    "swapped": (make_split(ret="swapped"), G.HINT_SWAPPED),
    "A as the gradient": (make_split(ret="A as grad"), G.HINT_A_AS_GRAD),
    "no gradient": (lambda m, x, c, layer, score: (make_split()(m, x, c, layer, score)[0], None), G.HINT_GRAD_NONE),
}


def test_the_split_solution_passes(capsys):
    assert G.gradcam_split(make_split()) is True
    out = capsys.readouterr().out
    assert out.startswith("PASS [05 Grad-CAM split]") and out.count("\n") == 1


@pytest.mark.parametrize("name", list(SPLIT_MISTAKES))
def test_each_split_mistake_gets_its_hint(name, capsys):
    fn, hint = SPLIT_MISTAKES[name]
    assert G.gradcam_split(fn) is False
    assert capsys.readouterr().out == f"HINT [05 Grad-CAM split] {hint}\n"


def test_the_course_code_passes_on_a_frozen_model_only(capsys):
    """The course's featureMaps = modelA(x).requires_grad_(True) is right on a frozen model: the trap is the unfrozen one."""
    frozen, unfrozen = G._tiny_models()
    assert not frozen.trainable_weights and unfrozen.trainable_weights
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32))
    a, g = make_split(leaf=False)(frozen, x, np.array([0, 2]), "conv2", "logit")
    ra, rg = G.split_reference(frozen, x, [0, 2], "conv2", "logit")
    assert G._near(g.numpy(), rg)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert make_split(leaf=False)(unfrozen, x, np.array([0, 2]), "conv2", "logit")[1] is None


def test_the_split_on_minivgg(minivgg, images, capsys):
    assert G.gradcam_split(make_split(), minivgg, images) is True
    assert "on minivgg's block5_conv3 (2 image(s), 6x6, K=128) it gives labkit.gradcam's A and gradients" in capsys.readouterr().out


def test_conv_twice_on_a_vgg_block_is_recognised_by_its_values(minivgg, images):
    """block5_conv3 maps K channels to K: applied twice it runs silently, and the gradient gives it away."""
    x = minivgg.tensor(images)
    with pytest.raises(G.Hint, match="applies block5_conv3 again"):
        G._split_one(make_split(head="conv twice"), minivgg.model, x, np.array([0, 1]), "block5_conv3", "logit")


def test_the_split_reference_is_labkits(minivgg, images):
    x = minivgg.tensor(images)
    for score in ("logit", "probability"):
        a, g = G.split_reference(minivgg.model, x, [2, 4], "block5_conv3", score)
        ra, rg, _ = lkgc.activations_and_gradients(minivgg, images, target=[2, 4], score=score)
        np.testing.assert_allclose(a, ra, rtol=1e-6)
        np.testing.assert_allclose(g, rg, rtol=1e-4, atol=1e-6 * np.abs(rg).max())


def test_split_bad_calls_raise(minivgg):
    with pytest.raises(TypeError, match="Backbone"):
        G.gradcam_split(make_split(), "minivgg", np.zeros((96, 96, 3), np.uint8))
    with pytest.raises(TypeError, match="both backbone and images"):
        G.gradcam_split(make_split(), minivgg)
