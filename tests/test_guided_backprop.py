"""Guided backprop: a known answer computed on paper, captum's GuidedBackprop, the hooks' hygiene, guided Grad-CAM."""

import sys

import numpy as np
import pytest
import torch
from torch import nn

import labkit  # noqa: F401  (pins the Keras backend to torch before keras is imported)
import keras
from labkit.gradcam import gradcam
from labkit.guided_backprop import guided_backprop, guided_backprop_keras_approx, guided_gradcam, guided_relus
from labkit.models import Backbone, freeze
from labkit.saliency import saliency

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

# ------------------------------------------------------------------------------------------------------
# The hand-built MLP on a one-pixel RGB "image" x = [1, 2, -1]:
#   W1 = [[1, -1, 0], [0, 1, 1], [1, 1, 1]]  pre1 = [-1, 1, 2]  mask1 = [0, 1, 1]  h1 = [0, 1, 2]
#   W2 = [[1, -1, 1], [2, 1, -1]]            pre2 = [1, -1]     mask2 = [1, 0]     h2 = [1, 0]
#   W3 = [[3, 2], [-1, 1]]                   y = [3, -1]: class 0 is predicted
# Class 0, guided: dy/dh2 = [3, 2] -> ReLU2: mask2 * clamp = [3, 0] -> dy/dh1 = W2^T [3, 0] = [3, -3, 3]
#                  -> ReLU1: mask1 * clamp = [0, 0, 3] -> dy/dx = W1^T [0, 0, 3] = [3, 3, 3]
#          plain:  [3, 2] -> [3, 0] -> [3, -3, 3] -> mask1 = [0, -3, 3] -> W1^T [0, -3, 3] = [3, 0, 0]
# Class 1, guided: [-1, 1] -> mask2 * clamp = [0, 0] -> 0;  plain: [-1, 0] -> [-1, 1, -1] -> [0, 1, -1] -> [-1, 0, 0]

W1 = [[1.0, -1, 0], [0, 1, 1], [1, 1, 1]]
W2 = [[1.0, -1, 1], [2, 1, -1]]
W3 = [[3.0, 2], [-1, 1]]
X = torch.tensor([1.0, 2.0, -1.0]).reshape(1, 1, 1, 3)


class HandMLP(nn.Module):
    def __init__(self, inplace=False):
        super().__init__()
        self.fc1, self.relu1 = nn.Linear(3, 3, bias=False), nn.ReLU(inplace)
        self.fc2, self.relu2 = nn.Linear(3, 2, bias=False), nn.ReLU(inplace)
        self.fc3 = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            for fc, w in ((self.fc1, W1), (self.fc2, W2), (self.fc3, W3)):
                fc.weight.copy_(torch.tensor(w))

    def forward(self, x):
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x.flatten(1))))))


def hand_keras() -> Backbone:
    from keras import layers

    inputs = keras.Input((1, 1, 3))
    h = layers.Flatten()(inputs)
    h = layers.Dense(3, activation="relu", use_bias=False, name="fc1")(h)
    h = layers.Dense(2, activation="relu", use_bias=False, name="fc2")(h)
    out = layers.Dense(2, activation="softmax", name="predictions")(h)
    model = keras.Model(inputs, out)
    model.get_layer("fc1").set_weights([np.array(W1, np.float32).T])
    model.get_layer("fc2").set_weights([np.array(W2, np.float32).T])
    model.get_layer("predictions").set_weights([np.array(W3, np.float32).T, np.zeros(2, np.float32)])
    return Backbone("mlp", freeze(model), ("zero", "one"), (1, 1), "none", 0.0, lambda x: x, lambda x: x)


@pytest.mark.parametrize("inplace", [False, True])
def test_known_answer(inplace):
    net = HandMLP(inplace)
    e = guided_backprop(net, X)
    assert e.targets.tolist() == [0] and e.raw.shape == (1, 1, 1, 3) and e.maps.shape == (1, 1, 1)
    np.testing.assert_allclose(e.raw[0, 0, 0], [3, 3, 3], atol=1e-6)
    assert e.maps[0, 0, 0] == pytest.approx(3)  # max over channels of |g|
    np.testing.assert_allclose(guided_backprop(net, X, target=1).raw[0, 0, 0], [0, 0, 0], atol=1e-6)
    # Outside the context the same net backpropagates plainly again.
    np.testing.assert_allclose(saliency(net, X).raw[0, 0, 0], [3, 0, 0], atol=1e-6)
    np.testing.assert_allclose(saliency(net, X, target=1).raw[0, 0, 0], [-1, 0, 0], atol=1e-6)
    assert [net.relu1.inplace, net.relu2.inplace] == [inplace, inplace]


def test_keras_approx_is_not_guided_backprop():
    bb = hand_keras()
    approx = guided_backprop_keras_approx(bb, X, preprocessed=True)
    np.testing.assert_allclose(approx.raw[0, 0, 0], [3, 0, 0], atol=1e-6)  # clamp of the plain gradient
    assert approx.maps[0, 0, 0] == pytest.approx(3)
    real = guided_backprop(HandMLP(), X)
    assert not np.allclose(approx.raw, real.raw)  # [3, 0, 0] vs the real [3, 3, 3]
    np.testing.assert_allclose(guided_backprop_keras_approx(bb, X, target=1, preprocessed=True).raw, 0, atol=1e-6)


def test_matches_captum_guided_backprop(tiny):
    from captum.attr import GuidedBackprop

    net = tiny.net(size=8, seed=12)
    x = torch.randn(4, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    ours = guided_backprop(net, x)
    theirs = GuidedBackprop(net).attribute(x, target=torch.as_tensor(ours.targets)).detach().numpy()
    np.testing.assert_allclose(ours.raw, theirs, rtol=1e-5, atol=1e-7)
    assert not np.allclose(ours.raw, saliency(net, x, target=ours.targets).raw)  # guidance changes something


def test_the_torch_twin_matches_captum_and_any_wrapper_of_it(tiny):
    from captum.attr import GuidedBackprop

    to_torch = pytest.importorskip("labkit.keras_to_torch").to_torch
    twin = to_torch(tiny.keras(seed=14).model)

    class Wrapped(nn.Module):  # the same modules, not a KerasTwin
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.logits(x)

    x = torch.randn(4, 8, 8, 3, generator=torch.Generator().manual_seed(3))
    ours = guided_backprop(twin, x)
    wrapped = Wrapped(twin)
    theirs = GuidedBackprop(wrapped).attribute(x, target=torch.as_tensor(ours.targets)).detach().numpy()
    np.testing.assert_allclose(ours.raw, theirs, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ours.raw, guided_backprop(wrapped, x, ours.targets).raw)
    assert not np.allclose(ours.raw, saliency(twin, x, target=ours.targets).raw)  # guidance changed something
    assert tiny.hooks(twin) == 0


class _GuidedReLU(torch.autograd.Function):
    """An independent guided ReLU: (y > 0) * clamp(grad, min=0), written as its own autograd function."""

    @staticmethod
    def forward(ctx, x):
        y = x.clamp(min=0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad.clamp(min=0) * (y > 0)


class Branching(nn.Module):
    """A residual block: the add hands ONE gradient tensor to both of its inputs (relu2's output and a).

    Clamping a gradient in place where several branches read it would corrupt the others; guided_relus
    clamps only what each ReLU's own backward just produced, which is why it is safe here.
    """

    def __init__(self, reference=False):
        super().__init__()
        self.reference = reference
        self.conv1, self.relu1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 3)

    def relu(self, module, x):
        return _GuidedReLU.apply(x) if self.reference else module(x)

    def forward(self, x):
        a = self.relu(self.relu1, self.conv1(x.permute(0, 3, 1, 2)))
        b = self.relu(self.relu2, self.conv2(a))
        # No ReLU after the add: the gradient it hands to both branches has the dense layer's signs.
        return self.fc((b + a).mean((2, 3)))


def test_a_shared_gradient_is_not_clamped_for_the_other_branch():
    from captum.attr import GuidedBackprop

    torch.manual_seed(5)
    net = Branching()
    reference = Branching(reference=True)
    reference.load_state_dict(net.state_dict())
    x = torch.randn(3, 6, 6, 3, generator=torch.Generator().manual_seed(4))
    ours = guided_backprop(net, x)
    xr = x.clone().requires_grad_(True)
    scores = reference(xr)
    (expected,) = torch.autograd.grad(scores.gather(1, torch.as_tensor(ours.targets)[:, None]).sum(), xr)
    np.testing.assert_allclose(ours.raw, expected.numpy(), rtol=1e-5, atol=1e-7)
    theirs = GuidedBackprop(net).attribute(x, target=torch.as_tensor(ours.targets)).detach().numpy()
    np.testing.assert_allclose(ours.raw, theirs, rtol=1e-5, atol=1e-7)
    assert net.relu2.inplace and not np.allclose(ours.raw, saliency(net, x, target=ours.targets).raw)


def test_inplace_relus_give_the_same_and_are_restored(tiny):
    plain, inplace = tiny.net(size=8, seed=13), tiny.net(size=8, seed=13, inplace=True)
    x = torch.randn(3, 8, 8, 3, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(guided_backprop(inplace, x).raw, guided_backprop(plain, x).raw)
    assert all(m.inplace for m in inplace.modules() if isinstance(m, nn.ReLU))
    assert tiny.hooks(inplace) == 0


def test_context_restores_everything_after_an_exception(tiny):
    net = tiny.net(size=8, seed=14, inplace=True)
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    with pytest.raises(RuntimeError, match="boom"):
        with guided_relus(net):
            assert not any(r.inplace for r in relus) and tiny.hooks(net) == len(relus)
            raise RuntimeError("boom")
    assert all(r.inplace for r in relus) and tiny.hooks(net) == 0
    # Nor is a full backward hook left: torch refuses a plain backward hook next to one, and accepts this.
    relus[0].register_backward_hook(lambda *a: None).remove()


def test_one_forward_and_batch_independence(tiny):
    net = tiny.net(size=8, seed=15)
    x = torch.randn(4, 8, 8, 3, generator=torch.Generator().manual_seed(2))
    e = guided_backprop(net, x)
    assert (net.calls, net.seen) == (1, 4) and all(p.grad is None for p in net.parameters())
    for i in range(4):
        np.testing.assert_allclose(guided_backprop(net, x[i], int(e.targets[i])).raw[0], e.raw[i], rtol=1e-5, atol=1e-7)


def test_hygiene(tiny):
    net = tiny.net(size=8, seed=16, inplace=True)
    x = torch.randn(2, 8, 8, 3, generator=torch.Generator().manual_seed(3))
    first = guided_backprop(net, x)
    for _ in range(100):
        e = guided_backprop(net, x)
        assert np.array_equal(e.raw, first.raw) and np.array_equal(e.maps, first.maps)
    assert tiny.hooks(net) == 0 and torch.is_grad_enabled()
    assert all(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))
    for _ in range(100):
        guided_gradcam(net, x)
    assert tiny.hooks(net) == 0


def test_guided_gradcam_is_the_product(tiny):
    net = tiny.net(size=8, seed=17)
    x = torch.randn(3, 8, 8, 3, generator=torch.Generator().manual_seed(4))
    gg = guided_gradcam(net, x, target=[0, 1, 2])
    gb, cam = guided_backprop(net, x, target=[0, 1, 2]), gradcam(net, x, target=[0, 1, 2])
    np.testing.assert_allclose(gg.maps, gb.maps * cam.maps, rtol=1e-6)
    np.testing.assert_allclose(gg.raw, gb.raw * cam.maps[..., None], rtol=1e-6)
    assert gg.targets.tolist() == [0, 1, 2] and gg.method == "guided_gradcam"


def test_guided_gradcam_backbone_with_twin(tiny):
    bb = tiny.keras(seed=18)
    twin = tiny.twin(bb)
    images = np.random.default_rng(5).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    gg = guided_gradcam(bb, images, twin=twin, layer="conv1")
    ref = guided_gradcam(twin, bb.preprocess(images), layer=twin.features[1])
    assert np.array_equal(gg.targets, ref.targets)
    np.testing.assert_allclose(gg.raw, ref.raw, rtol=1e-4, atol=1e-6)


def test_guided_gradcam_backbone_default_twin(tiny, monkeypatch):
    bb = tiny.keras(seed=19)
    x = torch.randn(1, 8, 8, 3)
    monkeypatch.setitem(sys.modules, "labkit.keras_to_torch", None)  # as if the converter were missing
    with pytest.raises(ValueError, match="pass twin="):
        guided_gradcam(bb, x, preprocessed=True)


def test_bad_inputs(tiny):
    bb = tiny.keras(seed=20)

    class NoReLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(torch.relu(x.flatten(1)))

    cases = [
        (lambda: guided_backprop(bb, torch.zeros(1, 8, 8, 3)), "guided_backprop_keras_approx"),
        (lambda: guided_backprop(NoReLU(), X), "no nn.ReLU modules"),
        (lambda: guided_backprop("net", X), "torch nn.Module"),
        (lambda: guided_backprop(HandMLP(), X, target=2), "out of range"),
        (lambda: guided_backprop(HandMLP(), X, score="odds"), "score must be one of"),
        (lambda: guided_backprop_keras_approx(bb, np.zeros((4, 4, 4), np.uint8)), "takes RGB images of shape"),
        (lambda: guided_gradcam(bb, torch.zeros(1, 8, 8, 3), layer="pool", twin=tiny.twin(bb), preprocessed=True), "not a Conv2D"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.vgg16
def test_vgg16_shapes(vgg16):
    from torchvision.models import vgg16 as tv_vgg16

    image = np.full((224, 224, 3), 110, np.uint8)
    approx = guided_backprop_keras_approx(vgg16, image)
    assert approx.raw.shape == (1, 224, 224, 3) and approx.maps.shape == (1, 224, 224) and np.all(approx.raw >= 0)

    class NHWC(nn.Module):  # torchvision's VGG16 (random weights, in-place ReLUs) on an NHWC batch
        def __init__(self):
            super().__init__()
            self.net = tv_vgg16(weights=None).eval()

        def forward(self, x):
            return self.net(x.permute(0, 3, 1, 2))

    twin = NHWC()
    x = torch.from_numpy(vgg16.preprocess(image))
    e = guided_gradcam(twin, x, layer=twin.net.features[29])  # the ReLU after conv5_3
    assert e.raw.shape == (1, 224, 224, 3) and e.maps.shape == (1, 224, 224) and np.all(np.isfinite(e.maps))
    assert all(m.inplace for m in twin.modules() if isinstance(m, nn.ReLU))


def test_guided_gradcam_backbone_builds_its_twin_once(tiny):
    to_torch = pytest.importorskip("labkit.keras_to_torch").to_torch
    bb = tiny.keras(seed=22)
    x = torch.randn(2, 8, 8, 3, generator=torch.Generator().manual_seed(6))
    gg = guided_gradcam(bb, x, preprocessed=True)
    twin = bb._torch_twin[-1]
    assert guided_gradcam(bb, x, preprocessed=True) is not None and bb._torch_twin[-1] is twin  # cached
    ref = guided_gradcam(bb, x, twin=to_torch(bb.model), preprocessed=True)
    np.testing.assert_allclose(gg.raw, ref.raw, rtol=1e-6, atol=1e-8)
    assert tiny.hooks(twin) == 0


def test_guided_gradcam_twin_follows_the_weights(tiny):
    # The model-randomisation sanity check: randomise a layer in place with set_weights, explain again. The
    # cached twin copied the old weights and must not be used; the result equals a fresh conversion's.
    to_torch = pytest.importorskip("labkit.keras_to_torch").to_torch
    bb = tiny.keras(seed=23)
    x = torch.randn(2, 8, 8, 3, generator=torch.Generator().manual_seed(7))
    before = guided_gradcam(bb, x, target=1, preprocessed=True)
    rng = np.random.default_rng(0)
    for name in ("fc", "conv1"):
        layer = bb.model.get_layer(name)
        layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])
        after = guided_gradcam(bb, x, target=1, preprocessed=True)
        fresh = guided_gradcam(bb, x, target=1, twin=to_torch(bb.model), preprocessed=True)
        np.testing.assert_allclose(after.raw, fresh.raw, rtol=1e-5, atol=1e-7)
        assert not np.allclose(after.raw, before.raw, rtol=1e-3)
        before = after
