"""Saliency: known answers on linear models, the preprocessing scale, captum's Saliency, hygiene."""

import numpy as np
import pytest
import torch
from torch import nn

import labkit  # noqa: F401  (pins the Keras backend to torch before keras is imported)
import keras
from labkit.attribution import class_scores
from labkit.models import Backbone, freeze
from labkit.saliency import saliency

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

H, WIDTH, C = 5, 4, 3


class Linear(nn.Module):
    """logits = flatten(x) @ W + b (NHWC flatten): d logit_c / d x = W[:, c] reshaped to (H, W, 3)."""

    def __init__(self, weight: np.ndarray):
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(weight))
        self.bias = nn.Parameter(torch.arange(weight.shape[1], dtype=torch.float32))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.flatten(1) @ self.weight + self.bias


def weights(classes=4, seed=0):
    return np.random.default_rng(seed).normal(size=(H * WIDTH * C, classes)).astype(np.float32)


def test_known_answer_linear_torch():
    w = weights()
    x = torch.randn(3, H, WIDTH, C, generator=torch.Generator().manual_seed(0))
    e = saliency(Linear(w), x, target=[0, 3, 1])
    for i, c in enumerate([0, 3, 1]):
        g = w[:, c].reshape(H, WIDTH, C)
        np.testing.assert_allclose(e.raw[i], g, atol=1e-6)  # the raw map is the signed gradient
        np.testing.assert_allclose(e.maps[i], np.abs(g).max(-1), atol=1e-6)
    assert e.targets.tolist() == [0, 3, 1]


def linear_backbone(w: np.ndarray) -> Backbone:
    from keras import layers

    inputs = keras.Input((H, WIDTH, C))
    out = layers.Dense(w.shape[1], activation="softmax", name="predictions")(layers.Flatten()(inputs))
    model = keras.Model(inputs, out)
    model.get_layer("predictions").set_weights([w, np.zeros(w.shape[1], np.float32)])
    # minivgg's preprocessing: x / 127.5 - 1
    return Backbone("linear", freeze(model), tuple("abcd"), (H, WIDTH), "none", 0.0, lambda x: x / 127.5 - 1, lambda x: (x + 1) * 127.5)


def test_known_answer_linear_keras_logit_and_probability():
    w = weights(seed=1)
    bb = linear_backbone(w)
    images = np.random.default_rng(2).integers(0, 256, (2, H, WIDTH, C)).astype(np.uint8)
    e = saliency(bb, images)  # gradient w.r.t. the preprocessed input: the kernel column, whatever the pixels
    probs = bb.predict(images)
    assert e.targets.tolist() == probs.argmax(1).tolist()
    for i, c in enumerate(e.targets):
        np.testing.assert_allclose(e.raw[i], w[:, c].reshape(H, WIDTH, C), atol=1e-6)
    # The probability's gradient involves every class: p_c (w_c - sum_j p_j w_j).
    p = saliency(bb, images, target=2, score="probability")
    for i in range(2):
        expected = probs[i, 2] * (w[:, 2] - w @ probs[i])
        np.testing.assert_allclose(p.raw[i], expected.reshape(H, WIDTH, C), rtol=1e-4, atol=1e-6)


def test_gradient_wrt_raw_pixels_is_the_same_up_to_the_preprocessing_scale(tiny):
    bb = tiny.keras(seed=7)
    images = np.random.default_rng(3).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    e = saliency(bb, images, target=1)
    pixels = torch.tensor(images, dtype=torch.float32, requires_grad=True)
    logits = class_scores(bb, bb.preprocess(pixels))
    (g,) = torch.autograd.grad(logits[:, 1].sum(), pixels)
    np.testing.assert_allclose(g.numpy() * 127.5, e.raw, rtol=1e-4, atol=1e-6)


def test_matches_captum_saliency(tiny):
    from captum.attr import Saliency

    net = tiny.net(size=8, seed=8)
    x = torch.randn(4, 8, 8, 3, generator=torch.Generator().manual_seed(4))
    ours = saliency(net, x)
    theirs = Saliency(net).attribute(x, target=torch.as_tensor(ours.targets), abs=True).amax(-1)
    np.testing.assert_allclose(ours.maps, theirs.numpy(), rtol=1e-5, atol=1e-7)


def test_keras_backbone_matches_its_torch_twin(tiny):
    bb = tiny.keras(seed=9)
    x = torch.randn(3, 8, 8, 3, generator=torch.Generator().manual_seed(5))
    k, t = saliency(bb, x, preprocessed=True), saliency(tiny.twin(bb), x)
    assert np.array_equal(k.targets, t.targets)
    np.testing.assert_allclose(k.raw, t.raw, rtol=1e-4, atol=1e-6)


def test_one_forward_and_batch_independence(tiny):
    net = tiny.net(size=8, seed=10)
    x = torch.randn(4, 8, 8, 3, generator=torch.Generator().manual_seed(6))
    e = saliency(net, x)
    assert (net.calls, net.seen) == (1, 4)
    assert all(p.grad is None for p in net.parameters())  # only the input gradient was taken
    for i in range(4):
        np.testing.assert_allclose(saliency(net, x[i], target=int(e.targets[i])).maps[0], e.maps[i], rtol=1e-5, atol=1e-7)


def test_hygiene(tiny):
    net = tiny.net(size=8, seed=11)
    x = torch.randn(2, 8, 8, 3, generator=torch.Generator().manual_seed(7))
    first = saliency(net, x)
    for _ in range(100):
        assert np.array_equal(saliency(net, x).maps, first.maps)
    assert tiny.hooks(net) == 0 and torch.is_grad_enabled()
    with torch.no_grad():
        assert np.array_equal(saliency(net, x).maps, first.maps)
        assert not torch.is_grad_enabled()
    assert not x.requires_grad  # the caller's tensor is left alone


def test_bad_inputs(tiny):
    bb = tiny.keras(seed=12)
    net = tiny.net(size=8)
    cases = [
        (lambda: saliency(bb, np.zeros((7, 8, 3), np.uint8)), "takes RGB images of shape"),
        (lambda: saliency(bb, np.zeros((8, 8, 3), np.uint8), target=5), "out of range"),
        (lambda: saliency(bb, np.zeros((8, 8, 3), np.uint8), target=-1), "out of range"),
        (lambda: saliency(net, torch.zeros(2, 8, 8, 3), target=[0, 1, 2]), "3 targets for 2 images"),
        (lambda: saliency(net, torch.zeros(1, 8, 8, 3), score="loss"), "score must be one of"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.vgg16
def test_vgg16_shapes(vgg16):
    e = saliency(vgg16, np.full((224, 224, 3), 100, np.uint8))
    assert e.maps.shape == (1, 224, 224) and e.raw.shape == (1, 224, 224, 3) and e.targets.shape == (1,)
    assert np.all(e.maps >= 0) and np.all(np.isfinite(e.maps))
