"""The torch twin computes what the Keras model computes: layer by layer, logits, gradients, hand-built answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import labkit  # noqa: F401  (pins the Keras backend)
import keras
from keras import layers

from labkit import attribution, data, models
from labkit import keras_to_torch as k2t

TOL = 1e-4  # float32, same kernels: measured max |diff| is 0 for convs/pools and ~6e-6 for the dense layers


@pytest.fixture(scope="module")
def minivgg():
    return models.load("minivgg", weights=None)


@pytest.fixture(scope="module")
def shapes():
    return data.make_shapes(4, seed=3)


def _check_report(report, model, tol=TOL):
    names = [l.name for l in model.layers if not isinstance(l, layers.InputLayer)]
    assert [r.layer for r in report] == names + ["logits"]
    bad = [(n, d) for n, d in report if not d <= tol]
    assert not bad, "\n" + k2t.format_parity(report, tol)


def test_minivgg_parity_every_layer(minivgg, shapes):
    twin = k2t.to_torch(minivgg)
    _check_report(k2t.parity_report(minivgg, twin, shapes.images), minivgg.model)
    # and the twin's forward is the backbone's predict: probabilities
    with torch.no_grad():
        probs = twin(minivgg.tensor(shapes.images)).numpy()
    np.testing.assert_allclose(probs, minivgg.predict(shapes.images), atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


@pytest.mark.skipif(
    not ((models.DATA_DIR / models.MINIVGG_WEIGHTS).is_file() and (models.DATA_DIR / models.MINIVGG_META).is_file()),
    reason="trained minivgg weights not in data/ yet",
)
def test_trained_minivgg_parity(shapes):
    bb = models.load("minivgg")
    _check_report(k2t.parity_report(bb, k2t.to_torch(bb), shapes.images), bb.model)


def test_vgg16_parity_batch_of_one():
    bb = models.load("vgg16", weights=None)
    image = data.load_image(data.sample_image("chelsea"), 224)
    twin = k2t.to_torch(bb)
    report = k2t.parity_report(bb, twin, image)
    _check_report(report, bb.model)
    assert dict(report)["logits"] <= TOL
    assert isinstance(twin.layer("block5_conv3"), torch.nn.ReLU)
    assert len(twin.relus()) == 13 + 2  # 13 convs + fc1 + fc2, each with its own ReLU module


def test_without_the_flatten_permutation_the_logits_are_wrong(minivgg, shapes):
    """The test of the trap can fail: skip the permutation and the logits differ, from fc1 on."""
    wrong = k2t.to_torch(minivgg, permute_flatten=False)
    report = dict(k2t.parity_report(minivgg, wrong, shapes.images))
    assert report["block5_pool"] <= TOL and report["flatten"] <= TOL  # the same numbers, compared in Keras order
    assert report["fc1"] > 1e-2
    assert report["logits"] > 1e-2


# ----------------------------------------------------------------------------------------------------
# Tiny hand-built Keras models with known weights


def _set(layer, kernel, bias=None):
    layer.kernel.assign(np.asarray(kernel, np.float32))
    if bias is not None:
        layer.bias.assign(np.asarray(bias, np.float32))


def test_flatten_order_known_answer():
    """H=1, W=2, C=2: Keras flattens to [x(0,0,0), x(0,0,1), x(0,1,0), x(0,1,1)], torch to [x(0,0,0), x(0,1,0), ...]."""
    inp = keras.Input((1, 2, 2))
    out = layers.Dense(1, name="fc1")(layers.Flatten(name="flatten")(inp))
    model = keras.Model(inp, out)
    _set(model.get_layer("fc1"), [[1.0], [10.0], [100.0], [1000.0]], [0.5])
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)  # x(0,0,:) = 1, 2; x(0,1,:) = 3, 4
    expected = 1 * 1 + 2 * 10 + 3 * 100 + 4 * 1000 + 0.5  # = 4321.5, by hand
    twin = k2t.to_torch(model)
    assert float(twin(torch.from_numpy(x))) == pytest.approx(expected)
    with torch.no_grad():
        assert float(model(x)[0, 0]) == pytest.approx(expected)
    # torch position c*H*W + i*W + j reads Keras row (i*W + j)*C + c: rows 0, 2, 1, 3
    np.testing.assert_array_equal(twin.classifier.fc1.weight.numpy(), [[1.0, 100.0, 10.0, 1000.0]])
    wrong = k2t.to_torch(model, permute_flatten=False)
    assert float(wrong(torch.from_numpy(x))) == pytest.approx(1 * 1 + 3 * 10 + 2 * 100 + 4 * 1000 + 0.5)


def test_conv_known_answer_and_kernel_layout():
    """A 1x1 conv with 2 input and 2 output channels: out_o = relu(sum_i x_i K[i, o] + b_o), checked by hand."""
    inp = keras.Input((2, 2, 2))
    out = layers.Conv2D(2, 1, activation="relu", name="conv")(inp)
    model = keras.Model(inp, out)
    _set(model.get_layer("conv"), [[[[1.0, -1.0], [2.0, 3.0]]]], [0.5, -10.0])  # HWIO: K[i=0] = (1, -1), K[i=1] = (2, 3)
    x = np.zeros((1, 2, 2, 2), np.float32)
    x[0, 0, 1] = (1.0, 2.0)  # pixel (0, 1): channel 0 = 1, channel 1 = 2
    x[0, 1, 0] = (3.0, 1.0)
    twin = k2t.to_torch(model)
    got = twin(torch.from_numpy(x)).numpy()  # no Flatten/Dense: NCHW out
    expected = np.zeros((1, 2, 2, 2), np.float32)  # NCHW
    expected[0, 0] = 0.5  # relu(0 + 0.5) where the pixel is zero
    expected[0, 1] = 0.0  # relu(-10)
    expected[0, :, 0, 1] = (1 * 1 + 2 * 2 + 0.5, max(1 * -1 + 2 * 3 - 10, 0))  # (5.5, 0)
    expected[0, :, 1, 0] = (3 * 1 + 1 * 2 + 0.5, max(3 * -1 + 1 * 3 - 10, 0))  # (5.5, 0)
    np.testing.assert_allclose(got, expected)
    np.testing.assert_array_equal(twin.features.conv.weight[:, :, 0, 0].numpy(), [[1.0, 2.0], [-1.0, 3.0]])  # OI


def _random_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0, 0.5, size=w.shape).astype(np.float32))


def test_asymmetric_same_padding_negative_pool_inputs_and_extra_layers():
    """Strided 'same' convs pad unevenly (TF puts the odd pixel after); 'same' max-pools pad with -inf, which
    matters when every input is negative (a linear conv). Plus Activation / ReLU / Dropout and a Sequential model."""
    model = keras.Sequential([
        keras.Input((7, 6, 3)),
        layers.Conv2D(4, 3, strides=2, padding="same", name="c1"),  # linear: negative values reach the pool
        layers.MaxPooling2D(2, strides=2, padding="same", name="p1"),
        layers.Conv2D(5, (2, 3), padding="same", activation="relu", name="c2"),
        layers.Conv2D(3, 1, padding="valid", name="c3"),
        layers.Activation("relu", name="act"),
        layers.Dropout(0.5, name="drop"),
        layers.Flatten(name="flatten"),
        layers.Dense(7, name="d1"),
        layers.ReLU(name="relu"),
        layers.Dense(3, activation="softmax", name="out"),
    ])
    _random_weights(model)
    x = np.random.default_rng(1).normal(size=(3, 7, 6, 3)).astype(np.float32)
    twin = k2t.to_torch(model)
    assert "c1_pad" in dict(twin.features.named_children())  # 7 rows -> pad (1, 1); 6 cols -> pad (0, 1)
    assert "p1_pad" in dict(twin.features.named_children())
    with torch.no_grad():
        c1 = keras.Model(model.inputs[0], model.get_layer("c1").output)(x)
    assert float(c1.min()) < 0  # negative values do reach the pool
    report = k2t.parity_report(model, twin, x)
    _check_report(report, model, 1e-5)
    assert isinstance(twin.layer("act"), torch.nn.ReLU) and isinstance(twin.layer("relu"), torch.nn.ReLU)
    with torch.no_grad():
        np.testing.assert_allclose(twin(torch.from_numpy(x)).numpy(), model(x).numpy(), atol=1e-6)


def test_negative_pool_input_would_break_zero_padding():
    """The -inf padding is needed: an all-negative map max-pooled with 'same' padding keeps its negative values."""
    model = keras.Sequential([keras.Input((3, 3, 1)), layers.MaxPooling2D(2, strides=2, padding="same", name="p")])
    x = -np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)  # -1 .. -9
    got = k2t.to_torch(model)(torch.from_numpy(x)).numpy()[0, 0]
    np.testing.assert_array_equal(got, [[-1.0, -3.0], [-7.0, -9.0]])  # by hand; zero padding would give 0s
    with torch.no_grad():
        np.testing.assert_array_equal(got, model(x).numpy()[0, :, :, 0])


def test_unsupported_layers_are_one_line_errors():
    inp = keras.Input((4, 4, 3))
    bn = keras.Model(inp, layers.BatchNormalization(name="bn")(layers.Conv2D(2, 3, name="c")(inp)))
    with pytest.raises(ValueError, match=r"cannot convert layer 'bn' \(BatchNormalization\): supported layers are") as e:
        k2t.to_torch(bn)
    assert "\n" not in str(e.value)
    elu = keras.Model(inp, layers.Conv2D(2, 3, activation="elu", name="c")(inp))
    with pytest.raises(ValueError, match=r"'c' \(Conv2D \(activation 'elu'\)\)"):
        k2t.to_torch(elu)
    a = layers.Conv2D(3, 1, name="a")(inp)
    branchy = keras.Model(inp, layers.Add(name="add")([a, inp]))
    with pytest.raises(ValueError, match="plain chains"):
        k2t.to_torch(branchy)
    with pytest.raises(ValueError, match="keras.Model or a labkit Backbone"):
        k2t.to_torch(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------------------------------
# What the other methods rely on


def test_twin_is_frozen_eval_on_device_with_hookable_relus(minivgg, shapes):
    twin = k2t.to_torch(minivgg)
    assert not twin.training
    assert all(not p.requires_grad for p in twin.parameters())
    assert next(twin.parameters()).device == models.device()
    relus = twin.relus()
    assert len(relus) == 13 + 2 and len({id(m) for _, m in relus}) == len(relus)  # every ReLU its own module
    assert all(not m.inplace for _, m in relus)
    assert twin.layer("block5_conv3") is twin.features.block5_conv3_relu
    assert twin.layer("block5_conv3_relu") is twin.features.block5_conv3_relu
    assert twin.layer("fc1") is twin.classifier.fc1_relu
    assert twin.layer("block5_pool") is twin.features.block5_pool
    with pytest.raises(ValueError, match="no layer 'nope': choose one of input|no layer 'nope': choose one of block1_conv1"):
        twin.layer("nope")
    # a forward hook on the ReLU of block5_conv3 sees Keras' block5_conv3 output (NCHW)
    seen = []
    handle = twin.layer("block5_conv3").register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        x = minivgg.tensor(shapes.images)
        with torch.no_grad():
            twin(x)
            keras_out = keras.Model(minivgg.model.inputs[0], minivgg.layer("block5_conv3").output)(x)
    finally:
        handle.remove()
    np.testing.assert_allclose(seen[0].permute(0, 2, 3, 1).numpy(), keras_out.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"takes preprocessed NHWC batches of shape \(N, 96, 96, 3\)"):
        twin(torch.zeros(1, 3, 96, 96))


def test_scores_and_input_gradients_match_keras(minivgg, shapes):
    """Gradient methods run on either: the twin's input gradient equals Keras' (float32 tolerance)."""
    twin = k2t.to_torch(minivgg)
    x = minivgg.tensor(shapes.images)
    for score in attribution.SCORES:
        with torch.no_grad():
            np.testing.assert_allclose(attribution.class_scores(twin, x, score).numpy(),
                                       attribution.class_scores(minivgg, x, score).numpy(), atol=1e-5)
    grads = []
    for model in (minivgg, twin):
        xi = x.clone().requires_grad_(True)
        attribution.class_scores(model, xi, "logit")[:, 2].sum().backward()
        grads.append(xi.grad.numpy())
    scale = np.abs(grads[0]).max()
    assert scale > 0
    np.testing.assert_allclose(grads[1], grads[0], atol=1e-5 * scale)


def test_format_parity_flags_failures():
    table = k2t.format_parity([("conv", 0.0), ("fc1", 3.5)], tolerance=1e-4)
    lines = table.splitlines()
    assert lines[0].startswith("layer") and "ok?" in lines[0]
    assert lines[2].endswith("ok") and lines[3].endswith("FAIL")


def test_nchw_view_and_pytorch_grad_cam(minivgg, shapes):
    """The NCHW view shares the twin's modules, so pytorch-grad-cam (which reads H, W from an NCHW input) runs
    on it, hooked at the twin's layer, and gives maps at the input size."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    twin = k2t.to_torch(minivgg)
    x = minivgg.tensor(shapes.images[:2])
    view = twin.as_nchw(logits=True)
    with torch.no_grad():
        np.testing.assert_array_equal(view(x.permute(0, 3, 1, 2)).numpy(), twin.logits(x).numpy())
        np.testing.assert_array_equal(twin.as_nchw()(x.permute(0, 3, 1, 2)).numpy(), twin(x).numpy())
    with GradCAM(model=view, target_layers=[twin.layer("block5_conv3")]) as gc:
        maps = gc(input_tensor=x.permute(0, 3, 1, 2).requires_grad_(True), targets=[ClassifierOutputTarget(1)] * 2)
    assert maps.shape == (2, 96, 96) and np.isfinite(maps).all()
    assert not twin.layer("block5_conv3")._forward_hooks  # the library removed its hooks
    with pytest.raises(ValueError, match="takes NCHW batches with 3 channels"):
        view(x)
