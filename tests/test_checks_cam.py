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


def test_a_function_that_uses_the_notebooks_globals_is_told_the_check_uses_its_own_arrays(capsys):
    """Issue 11 §6: a student's function that ignores its arguments gets numpy's matmul error plus the reason."""
    notebook_maps = np.ones((6, 6, 128))

    def uses_a_global(feature_maps, weights, c):
        return notebook_maps @ weights[:, c]

    assert check_cam(uses_a_global) is False
    out = capsys.readouterr().out
    assert "raised ValueError: matmul" in out and C.NOTE_OWN_ARRAYS in out


# -- the head exercise: checks.cam_head ---------------------------------------------------------------------

import keras  # noqa: E402


def make_head(*, freeze=True, pool="avg", activation="softmax", at=None, extra_dense=False, compile=True, units=None):
    """A student's build_cam_model with (at most) one mistake built in; the defaults are the solution."""

    def build_cam_model(model, layer, num_classes):
        base = keras.Model(model.inputs, model.get_layer(at or layer).output)
        if freeze:
            base.trainable = False
        h = {"avg": keras.layers.GlobalAveragePooling2D(), "max": keras.layers.GlobalMaxPooling2D(),
             "flatten": keras.layers.Flatten()}[pool](base.output)
        if extra_dense:
            h = keras.layers.Dense(16, activation="relu")(h)
        out = keras.layers.Dense(units or num_classes, activation=activation)(h)
        cam_model = keras.Model(base.inputs, out)
        if compile:
            cam_model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                              metrics=["accuracy"])
        return cam_model

    return build_cam_model


HEAD_MISTAKES = {
    "not frozen": (make_head(freeze=False), C.HINT_NOT_FROZEN.format(n=4)),
    "flatten": (make_head(pool="flatten"), C.HINT_FLATTEN.format(k_in=384, h=8, w=8, k=6)),
    "max pooling": (make_head(pool="max"), C.HINT_MAX_POOL),
    "no activation": (make_head(activation=None), C.HINT_ACTIVATION.format(act="linear (none)")),
    "relu": (make_head(activation="relu"), C.HINT_ACTIVATION.format(act="relu")),
    "sigmoid": (make_head(activation="sigmoid"), C.HINT_ACTIVATION.format(act="sigmoid")),
    "on the pooled maps": (make_head(at="pool"), C.HINT_WRONG_LAYER.format(other="pool", layer="conv2")),
    "on an earlier conv": (make_head(at="conv1"), C.HINT_WRONG_LAYER.format(other="conv1", layer="conv2")),
    "two dense layers": (make_head(extra_dense=True), C.HINT_ONE_DENSE.format(n=2)),
    "not compiled": (make_head(compile=False), C.HINT_NOT_COMPILED),
    "wrong number of classes": (make_head(units=6), C.HINT_NUM_CLASSES.format(got=6, want=3)),
    "returns nothing": (lambda model, layer, num_classes: None, C.HINT_NOT_MODEL),
}


def test_the_head_solution_passes(capsys):
    assert C.cam_head(make_head()) is True
    out = capsys.readouterr().out
    assert out.startswith("PASS [04 CAM head]") and out.count("\n") == 1


@pytest.mark.parametrize("name", list(HEAD_MISTAKES))
def test_each_head_mistake_gets_its_hint(name, capsys):
    fn, hint = HEAD_MISTAKES[name]
    assert C.cam_head(fn) is False
    assert capsys.readouterr().out == f"HINT [04 CAM head] {hint}\n"


@pytest.fixture(scope="module")
def trained():
    """minivgg's shipped weights, labkit's reference head on 120 shapes, 60 test shapes."""
    bb = models.load("minivgg")
    train, test = data.make_shapes(120, seed=4), data.make_shapes(60, seed=1)
    ref = lkcam.train_cam_head(bb, train.images, train.labels, data.CLASSES, epochs=30, batch_size=40, progress=False)
    return bb, ref, test


def test_a_trained_head_passes_and_an_untrained_one_is_too_weak(trained, capsys):
    bb, ref, test = trained
    keras.utils.set_random_seed(0)
    student = make_head()(bb.model, "block5_conv3", 6)
    # "trained": the student's Dense layer given the reference head's weights (what fit would find, without the wait)
    student.layers[-1].set_weights([ref.weights, ref.bias])
    assert C.cam_head(make_head(), student, ref, test.images, test.labels) is True
    assert "accuracy" in capsys.readouterr().out
    untrained = make_head()(bb.model, "block5_conv3", 6)
    untrained.layers[-1].set_weights([np.zeros_like(ref.weights), np.linspace(0, 1, 6).astype(np.float32)])
    assert C.cam_head(make_head(), untrained, ref, test.images, test.labels) is False
    out = capsys.readouterr().out
    assert out.startswith("HINT [04 CAM head] your trained head is right on 0.") and "labkit's head" in out


def test_the_trained_model_is_checked_on_the_backbone_too(trained, capsys):
    bb, ref, test = trained
    on_pool = make_head(at="block5_pool")(bb.model, "block5_conv3", 6)
    assert C.cam_head(make_head(), on_pool, ref, test.images, test.labels) is False
    assert capsys.readouterr().out == (
        f"HINT [04 CAM head] {C.HINT_WRONG_LAYER.format(other='block5_pool', layer='block5_conv3')}\n")
    assert C.cam_head(make_head(), None, ref, test.images, test.labels) is False
    assert capsys.readouterr().out == f"HINT [04 CAM head] {C.HINT_NOT_TRAINED}\n"


def test_head_bad_calls_raise(trained):
    bb, ref, test = trained
    with pytest.raises(TypeError, match="CAMHead"):
        C.cam_head(make_head(), None, bb, test.images, test.labels)
    with pytest.raises(TypeError, match="together"):
        C.cam_head(make_head(), None, ref)
