"""checks.cam (stage 04): passes the solution, and gives each recognised mistake its own hint.

A mutant is a student function with one mistake built in; each must fail WITH the hint that names it.
The real-feature-map part runs on an untrained minivgg with a head built from given weights (no
training: the check does not care how good the head is).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import labkit  # noqa: F401  (pins the Keras backend)
from labkit import cam as lkcam
from labkit import data, models
# the module, not the function labkit.checks exports under the same name
C = importlib.import_module("labkit.checks.cam")
from labkit.checks.cam import cam as check_cam


def solution(feature_maps, weights, c):
    """The notebook's solution (solutions/04_cam.ipynb)."""
    # CAM_c = sum_k w[k, c] M_k: column c of the kernel weighs the K maps; no bias, no ReLU
    return feature_maps @ weights[:, c]


def loop_solution(feature_maps, weights, c):
    """Another correct way: an explicit loop over the channels."""
    out = np.zeros(feature_maps.shape[:2])
    for k in range(feature_maps.shape[2]):
        out += weights[k, c] * feature_maps[:, :, k]
    return out


def torch_solution(feature_maps, weights, c):
    """Correct, but returns a torch tensor: accepted."""
    import torch

    return torch.einsum("hwk,k->hw", torch.as_tensor(feature_maps), torch.as_tensor(weights[:, c]))


BIAS = np.linspace(-1.0, 2.0, 6)  # a global bias the "bias" mutant adds, as a student would add head.bias


MISTAKES = {
    "relu": (lambda f, w, c: np.maximum(f @ w[:, c], 0), C.HINT_RELU),
    "clip": (lambda f, w, c: np.clip(f @ w[:, c], 0, None), C.HINT_RELU),
    "bias": (lambda f, w, c: f @ w[:, c] + BIAS[c], C.HINT_BIAS),
    "mean": (lambda f, w, c: (f * w[:, c]).mean(axis=-1), C.HINT_MEAN),
    "row": (lambda f, w, c: f @ w[c], C.HINT_ROW),
    "all classes": (lambda f, w, c: f @ w.sum(axis=1), C.HINT_ALL),
    "normalised": (lambda f, w, c: (lambda m: (m - m.min()) / (m.max() - m.min()))(f @ w[:, c]), C.HINT_NORMALISED),
    "by max": (lambda f, w, c: (lambda m: m / np.abs(m).max())(f @ w[:, c]), C.HINT_NORMALISED),
    "in place": (lambda f, w, c: np.multiply(f, w[:, c], out=f).sum(-1), C.HINT_INPLACE),
}


@pytest.mark.parametrize("fn", [solution, loop_solution, torch_solution], ids=["matmul", "loop", "torch"])
def test_the_solution_passes(fn, capsys):
    assert check_cam(fn) is True
    out = capsys.readouterr().out
    assert out.startswith("PASS [04 CAM]") and out.count("\n") == 1


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_mistake_gets_its_hint(name, capsys):
    fn, hint = MISTAKES[name]
    assert check_cam(fn) is False
    assert capsys.readouterr().out == f"HINT [04 CAM] {hint}\n"


def test_the_mutants_are_distinguishable_on_the_cases():
    """Every mutant differs from the reference and from every other hint's answer (else hints would be wrong)."""
    for fm, w in C._cases():
        for c in range(w.shape[1]):
            ref = C.reference(fm, w, c)
            answers = C.mutants(fm, w, c, bias=BIAS)
            for hint, wrong in answers:
                assert not C.close(wrong, ref), hint
                for other, wrong2 in answers:
                    if other != hint:
                        assert not C.close(wrong, wrong2), (hint, other)
    fm, w = C._cases()[0]
    assert w.shape[0] == w.shape[1]  # square: the row-c mistake has the right shape and is recognisable
    assert any(C.reference(fm, w, c).min() < 0 for c in range(w.shape[1]))  # the ReLU mistake is visible


def test_other_mistakes_get_a_generic_hint(capsys):
    def upsampled(f, w, c):
        return np.kron(f @ w[:, c], np.ones((2, 2)))

    def unsummed(f, w, c):
        return f * w[:, c]

    def stub(f, w, c):
        raise NotImplementedError("replace this line with your solution")

    def nothing(f, w, c):
        m = f @ w[:, c]  # noqa: F841 - forgets to return it

    def noisy(f, w, c):
        return f @ w[:, c] + np.linspace(0, 1, f.shape[0] * f.shape[1]).reshape(f.shape[:2])

    expected = {
        upsampled: "has shape (6, 8), expected (3, 4): one value per feature-map position",
        unsummed: "has shape (3, 4, 5), expected (3, 4)",
        stub: "still raises NotImplementedError",
        nothing: "returned None: return the result",
        noisy: "differs from the reference",
    }
    for fn, text in expected.items():
        assert check_cam(fn) is False
        out = capsys.readouterr().out
        assert out.startswith("HINT [04 CAM]") and text in out, out


@pytest.fixture(scope="module")
def head():
    """An untrained minivgg with a hand-set head: K = 128 channels, C = 6 classes, a nonzero bias."""
    bb = models.load("minivgg", weights=None)
    rng = np.random.default_rng(0)
    return lkcam.CAMHead.from_weights(bb, "block5_conv3", rng.normal(size=(128, 6)), BIAS, data.CLASSES)


@pytest.fixture(scope="module")
def image():
    return data.make_shapes(1, seed=3).images[0]


def test_on_the_real_feature_maps(head, image, capsys):
    assert check_cam(solution, head, image) is True
    out = capsys.readouterr().out
    assert "on minivgg's block5_conv3 maps (6x6, K=128) it gives the head's CAM for all 6 classes" in out
    # the student's map IS what labkit.cam.cam draws (its raw map at the layer's resolution)
    fm = C._feature_maps(head, image)
    for c in (0, 5):
        np.testing.assert_allclose(solution(fm, head.weights, c), lkcam.cam(head, image, target=c).raw[0],
                                   rtol=1e-4, atol=1e-4)


def test_the_head_bias_is_caught_on_the_real_maps(head, image, capsys):
    def with_bias(f, w, c):
        return f @ w[:, c] + head.bias[c]

    assert check_cam(with_bias, head, image) is False
    assert capsys.readouterr().out == f"HINT [04 CAM] {C.HINT_BIAS}\n"


def test_bad_calls_raise():
    with pytest.raises(TypeError, match="CAMHead"):
        check_cam(solution, models.load("minivgg", weights=None), np.zeros((96, 96, 3), np.uint8))
    with pytest.raises(TypeError, match="both head and image"):
        check_cam(solution, head=None, image=np.zeros((96, 96, 3), np.uint8))
