"""Grad-CAM: a known answer computed on paper, cross-checks with captum and pytorch-grad-cam, hygiene."""

import numpy as np
import pytest
import torch
from torch import nn

import labkit  # noqa: F401  (pins the Keras backend to torch before keras is imported)
import keras
from labkit.attribution import upsample
from labkit.gradcam import CAMBase, GradCAM, combine, gradcam
from labkit.models import Backbone, freeze

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

# ------------------------------------------------------------------------------------------------------
# The hand-built net: conv 1x1 (1 channel, reads R only, ReLU) -> maxpool 2x2 -> flatten -> dense(2)
#
#   R = [[1, 2, 0, -1],      A = ReLU(R) = [[1, 2, 0, 0],      pooled (cells TL TR BL BR) = [3, 4, 5, 6]
#        [3, 0, 4,  1],                     [3, 0, 4, 1],      argmax of each cell: (1,0) (1,2) (2,1) (3,3)
#        [0, 5, 2,  2],                     [0, 5, 2, 2],
#        [1, 1, 0,  6]]                     [1, 1, 0, 6]]
#
#   W[:, 0] = [.1, -.1, .2, .2]   y0 = .3 - .4 + 1 + 1.2 = 2.1   -> the predicted class
#   W[:, 1] = [-.1, 0, 0, -.3]    y1 = -.3 - 1.8        = -2.1
#
# dy0/dA is W[cell, 0] at each cell's argmax and 0 elsewhere (max-pool routes the gradient), so
#   alpha0 = (.1 - .1 + .2 + .2) / 16 = .025    cam0 = ReLU(.025 A) = .025 A
#   alpha1 = (-.1 + 0 + 0 - .3) / 16 = -.025    cam1 = ReLU(-.025 A) = 0
# With score="probability" (2 classes): dp0/dA = p0 p1 (dy0/dA - dy1/dA), alpha = p0 p1 (.025 + .025).

R = np.array([[1, 2, 0, -1], [3, 0, 4, 1], [0, 5, 2, 2], [1, 1, 0, 6]], np.float32)
A = np.maximum(R, 0)
W = np.array([[0.1, -0.1], [-0.1, 0.0], [0.2, 0.0], [0.2, -0.3]], np.float32)  # (cells, classes)


def hand_image():
    x = np.empty((1, 4, 4, 3), np.float32)
    x[..., 0], x[..., 1], x[..., 2] = R, 7.0, -3.0  # G and B are ignored by the conv
    return torch.from_numpy(x)


def hand_keras() -> Backbone:
    from keras import layers

    inputs = keras.Input((4, 4, 3))
    h = layers.Conv2D(1, 1, activation="relu", name="conv")(inputs)
    h = layers.MaxPooling2D(2, name="pool")(h)
    h = layers.Flatten(name="flatten")(h)
    out = layers.Dense(2, activation="softmax", name="predictions")(h)
    model = keras.Model(inputs, out)
    model.get_layer("conv").set_weights([np.array([1, 0, 0], np.float32).reshape(1, 1, 3, 1), np.zeros(1, np.float32)])
    model.get_layer("predictions").set_weights([W, np.zeros(2, np.float32)])
    return Backbone("hand", freeze(model), ("zero", "one"), (4, 4), "conv", 0.0, lambda x: x, lambda x: x)


class HandTorch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.pool, self.fc = nn.Conv2d(3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 0, 0]).reshape(1, 3, 1, 1))
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.from_numpy(W.T))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x.permute(0, 3, 1, 2)))).flatten(1))


def test_known_answer_keras():
    bb, x = hand_keras(), hand_image()
    e = gradcam(bb, x, preprocessed=True)
    assert e.targets.tolist() == [0] and e.raw.shape == (1, 4, 4) and e.maps.shape == (1, 4, 4)
    np.testing.assert_allclose(e.raw[0], 0.025 * A, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(e.maps, e.raw, atol=0)  # same resolution: nothing to upsample
    assert np.all(gradcam(bb, x, target=1, preprocessed=True).raw == 0)
    p0 = 1 / (1 + np.exp(-4.2))
    prob = gradcam(bb, x, target=0, score="probability", preprocessed=True)
    np.testing.assert_allclose(prob.raw[0], p0 * (1 - p0) * 0.05 * A, rtol=1e-4, atol=1e-7)


def test_known_answer_torch():
    net, x = HandTorch(), hand_image()
    e = gradcam(net, x)  # default layer: the last conv, followed by its ReLU
    np.testing.assert_allclose(e.raw[0], 0.025 * A, rtol=1e-5, atol=1e-7)
    pre = gradcam(net, x, layer=net.conv)  # pre-ReLU A = R: the negative R values are cut by the final ReLU
    np.testing.assert_allclose(pre.raw[0], 0.025 * A, rtol=1e-5, atol=1e-7)
    assert np.all(gradcam(net, x, target=1, layer="relu").raw == 0)


def test_keras_backbone_matches_its_torch_twin(tiny):
    bb = tiny.keras(size=8, classes=3, seed=1)
    net = tiny.twin(bb)
    x = torch.randn(4, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    for kname, tlayer in (("conv2", net.features[3]), ("conv1", net.features[1])):  # Keras' conv = conv + ReLU
        for t in (None, 2):
            k = gradcam(bb, x, target=t, layer=kname, preprocessed=True)
            t_ = gradcam(net, x, target=t, layer=tlayer)
            assert np.array_equal(k.targets, t_.targets)
            np.testing.assert_allclose(k.raw, t_.raw, rtol=1e-4, atol=1e-5)
    assert np.array_equal(gradcam(net, x).raw, gradcam(net, x, layer=net.features[3]).raw)  # the default layer


@pytest.mark.parametrize("which", [2, 3])  # the conv (pre-ReLU) and its ReLU
def test_matches_captum_layergradcam(tiny, which):
    from captum.attr import LayerGradCam

    net = tiny.net(size=8, seed=3)
    layer = net.features[which]
    x = torch.randn(5, 8, 8, 3, generator=torch.Generator().manual_seed(1))
    ours = gradcam(net, x, layer=layer)
    theirs = LayerGradCam(net, layer).attribute(x, target=torch.as_tensor(ours.targets), relu_attributions=True)
    np.testing.assert_allclose(ours.raw, theirs[:, 0].detach().numpy(), rtol=1e-5, atol=1e-6)


def test_matches_pytorch_grad_cam(tiny):
    from pytorch_grad_cam import GradCAM as PGC
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = tiny.net(size=8, seed=4)
    x = torch.randn(5, 8, 8, 3, generator=torch.Generator().manual_seed(2))
    ours = gradcam(net, x, layer=net.features[3])
    with PGC(model=tiny.NCHW(net), target_layers=[net.features[3]]) as cam:
        theirs = cam(input_tensor=x.permute(0, 3, 1, 2), targets=[ClassifierOutputTarget(int(t)) for t in ours.targets])

    def rescale(m):  # pytorch-grad-cam's (m - min) / (1e-7 + max), which it applies twice (per layer, then overall)
        m = m - m.min(axis=(1, 2), keepdims=True)
        return m / (1e-7 + m.max(axis=(1, 2), keepdims=True))

    # It also resizes to the input size, a no-op here: the layer is 8x8 like the input.
    np.testing.assert_allclose(rescale(rescale(ours.raw)), theirs, atol=1e-6)


def test_one_forward_and_batch_independence(tiny):
    net = tiny.net(size=8, seed=5)
    x = torch.randn(4, 8, 8, 3, generator=torch.Generator().manual_seed(3))
    e = gradcam(net, x, target=[0, 1, 2, 0])
    assert (net.calls, net.seen) == (1, 4)  # one forward for the batch, no extra pass for the targets
    assert all(p.grad is None for p in net.parameters())  # the backward went to A only
    for i in range(4):
        one = gradcam(net, x[i : i + 1], target=int(e.targets[i]))
        np.testing.assert_allclose(one.raw[0], e.raw[i], rtol=1e-5, atol=1e-6)


def test_keras_features_run_without_a_graph(tiny, monkeypatch):
    bb = tiny.keras(seed=2)
    cam = GradCAM(bb)
    seen = {}
    features = cam._features

    def spy(x):
        seen["grad_enabled"] = torch.is_grad_enabled()
        return features(x)

    cam._features = spy
    e = cam(torch.zeros(2, 8, 8, 3), preprocessed=True)
    assert seen["grad_enabled"] is False and e.raw.shape == (2, 8, 8)


def test_the_skeleton_is_reusable_without_gradients(tiny):
    class SumCAM(CAMBase):  # what CAM does with dense weights: a fixed weight per channel, no backward
        method = "sumcam"
        uses_gradients = False

        def channel_weights(self, activations, gradients, scores, targets):
            assert gradients is None
            return torch.ones(activations.shape[:2])

    bb = tiny.keras(seed=3)
    x = torch.randn(2, 8, 8, 3, generator=torch.Generator().manual_seed(4))
    e = SumCAM(bb, layer="conv2")(x, preprocessed=True)
    a = keras.Model(bb.model.inputs, bb.model.get_layer("conv2").output)(x).detach().numpy()
    np.testing.assert_allclose(e.raw, a.sum(-1), rtol=1e-5, atol=1e-6)  # A >= 0 after the fused ReLU
    a4 = torch.tensor([[[[1.0]], [[-3.0]]]])  # (1, 2, 1, 1)
    assert combine(a4, torch.tensor([[1.0, 1.0]])).item() == 0.0  # ReLU
    assert combine(a4, torch.tensor([[1.0, 1.0]]), relu=False).item() == -2.0


def test_hygiene_torch(tiny):
    net = tiny.net(size=8, seed=6)
    x = torch.randn(2, 8, 8, 3, generator=torch.Generator().manual_seed(5))
    first = gradcam(net, x)
    for _ in range(100):
        e = gradcam(net, x)
        assert np.array_equal(e.raw, first.raw) and np.array_equal(e.maps, first.maps)
    assert tiny.hooks(net) == 0 and torch.is_grad_enabled()
    with torch.no_grad():  # works inside the caller's no_grad, and leaves it as it was
        assert np.array_equal(gradcam(net, x).raw, first.raw)
        assert not torch.is_grad_enabled()
    with pytest.raises(ValueError, match="not .N, K, h, w. feature maps"):  # the hook raises mid-forward
        gradcam(net, x, layer=net.classifier[0])
    assert tiny.hooks(net) == 0 and torch.is_grad_enabled()


def test_hygiene_keras(tiny):
    bb = tiny.keras(seed=4)
    x = torch.randn(2, 8, 8, 3, generator=torch.Generator().manual_seed(6))
    first = gradcam(bb, x, preprocessed=True)
    for _ in range(100):
        assert np.array_equal(gradcam(bb, x, preprocessed=True).raw, first.raw)
    assert list(bb._cam_splits[1]) == ["conv2"]  # the split is built once
    assert tiny.hooks(*bb.model.layers) == 0 and torch.is_grad_enabled()
    with torch.no_grad():
        assert np.array_equal(gradcam(bb, x, preprocessed=True).raw, first.raw)


def test_bad_inputs(tiny):
    bb = tiny.keras(seed=5)
    net = tiny.net(size=8)
    spare = tiny.net(size=8)
    spare.unused = nn.Conv2d(3, 3, 1)  # a submodule that forward() never runs
    x = torch.zeros(1, 8, 8, 3)
    cases = [
        (lambda: gradcam(bb, x, layer="nope", preprocessed=True), "has no layer 'nope'"),
        (lambda: gradcam(bb, x, layer="pool", preprocessed=True), "not a Conv2D.*conv1, conv2"),
        (lambda: gradcam(bb, x, layer="fc", preprocessed=True), "not a Conv2D"),
        (lambda: gradcam(bb, x, target=3, preprocessed=True), "out of range"),
        (lambda: gradcam(bb, torch.zeros(1, 9, 8, 3), preprocessed=True), "takes RGB images of shape"),
        (lambda: gradcam(bb, x, score="softmax", preprocessed=True), "score must be one of"),
        (lambda: gradcam(net, x, layer="features.9"), "no submodule 'features.9'"),
        (lambda: gradcam(net, x, layer=nn.Conv2d(3, 3, 1)), "submodule of the model"),
        (lambda: gradcam(spare, x, layer="unused"), "not used by the model's forward"),
        (lambda: gradcam(net, x, target=[0, 1]), "2 targets for 1 images"),
        (lambda: gradcam(net, torch.zeros(8, 8)), "images must be"),
        (lambda: gradcam("model", x), "Backbone or a torch nn.Module"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    assert tiny.hooks(net) == 0


@pytest.mark.vgg16
def test_vgg16_shapes(vgg16):
    image = np.full((224, 224, 3), 128, np.uint8)
    e = gradcam(vgg16, image)
    assert e.raw.shape == (1, 14, 14) and e.maps.shape == (1, 224, 224) and e.targets.shape == (1,)
    assert np.all(e.raw >= 0) and np.all(np.isfinite(e.maps))
    # the maps are upsampled in torch, the same sampling as skimage's bilinear (tests/test_attribution.py)
    np.testing.assert_allclose(e.maps, upsample(e.raw, (224, 224)), rtol=1e-5, atol=1e-6 * np.abs(e.raw).max())


def test_the_keras_to_torch_twin_gives_the_same_maps(tiny):
    to_torch = pytest.importorskip("labkit.keras_to_torch").to_torch
    bb = tiny.keras(seed=21)
    twin = to_torch(bb.model)
    x = torch.randn(3, 8, 8, 3, generator=torch.Generator().manual_seed(8))
    for layer in (None, "conv1", "conv2"):  # the twin takes Keras layer names; None: the ReLU after the last conv
        k = gradcam(bb, x, layer=layer, preprocessed=True)
        t = gradcam(twin, x, layer=layer)
        assert np.array_equal(k.targets, t.targets)
        np.testing.assert_allclose(k.raw, t.raw, rtol=1e-4, atol=1e-5)


def test_the_twin_is_cut_without_hooks_and_agrees_with_the_hooked_path(tiny):
    to_torch = pytest.importorskip("labkit.keras_to_torch").to_torch
    twin = to_torch(tiny.keras(seed=22).model)
    x = torch.randn(3, 8, 8, 3, generator=torch.Generator().manual_seed(9))

    class Wrapped(nn.Module):  # not a KerasTwin: Grad-CAM has to hook the layer's output
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):  # logits, as a torch model's forward is taken to return
            return self.inner.logits(x)

    wrapped = Wrapped(twin)
    for name in ("conv1", "conv2"):
        up_to, after = twin.split(twin.output_of[name])
        with torch.no_grad():
            torch.testing.assert_close(after(up_to(x)), twin.logits(x), rtol=0, atol=0)
        cam = GradCAM(twin, name)
        assert cam._split is not None and GradCAM(wrapped, twin.layer(name))._split is None
        for score in ("logit", "probability"):
            direct = gradcam(twin, x, layer=name, score=score)
            hooked = gradcam(wrapped, x, layer=twin.layer(name), score=score)
            assert np.array_equal(direct.targets, hooked.targets)
            np.testing.assert_allclose(direct.raw, hooked.raw, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(direct.maps, hooked.maps, rtol=1e-6, atol=1e-7)
    assert twin.split("classifier.fc") is None  # after Flatten there are no feature maps to cut at
    assert tiny.hooks(twin) == 0
