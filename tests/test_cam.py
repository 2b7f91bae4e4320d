"""CAM: a known answer by hand, the CAM identity, a head-only training, bad inputs, and a VGG16 shape run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import labkit  # noqa: F401  (pins the Keras backend)
import keras
from keras import layers

from labkit import data, models
from labkit.attribution import upsample
from labkit import cam as C
from labkit.models import Backbone


# ----------------------------------------------------------------------------------------------------
# Known answers


def _tiny_backbone():
    """3x3 RGB in, a 1x1 conv that copies channels 0 and 1 (so the feature maps ARE the image's first two
    channels), preprocessing = identity."""
    inp = keras.Input((3, 3, 3))
    x = layers.Conv2D(2, 1, name="conv")(inp)
    out = layers.Dense(2, activation="softmax", name="out")(layers.Flatten(name="flatten")(x))
    model = keras.Model(inp, out)
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, 0, 0] = kernel[0, 0, 1, 1] = 1.0
    model.get_layer("conv").set_weights([kernel, np.zeros(2, np.float32)])
    return Backbone("tiny", models.freeze(model), ("a", "b"), (3, 3), "conv", 0.0, lambda x: x, lambda x: x)


M0 = np.array([[1, 0, 0], [0, 2, 0], [0, 0, 0]], np.float32)
M1 = np.array([[0, 0, 3], [0, 0, 0], [1, 0, 0]], np.float32)
KERNEL = np.array([[1.0, -1.0], [2.0, 0.5]], np.float32)  # (K=2 channels, C=2 classes)
BIAS = np.array([10.0, -10.0], np.float32)


def test_known_answer_by_hand():
    bb = _tiny_backbone()
    head = C.CAMHead.from_weights(bb, "conv", KERNEL, BIAS, ("a", "b"))
    image = np.stack([M0, M1, np.full((3, 3), 7.0, np.float32)], axis=-1)  # channel 2 must not matter
    # class 0: 1*M0 + 2*M1; class 1: -1*M0 + 0.5*M1 (bias excluded) — written out by hand
    cam_a = np.array([[1, 0, 6], [0, 2, 0], [2, 0, 0]], np.float32)
    cam_b = np.array([[-1, 0, 1.5], [0, -2, 0], [0.5, 0, 0]], np.float32)
    # the head's logits: GAP(M0) = 3/9, GAP(M1) = 4/9, so a: 3/9 + 8/9 + 10, b: -3/9 + 2/9 - 10 -> predicts "a"
    np.testing.assert_allclose(head.logits(image[None])[0], [3 / 9 + 8 / 9 + 10, -3 / 9 + 2 / 9 - 10], rtol=1e-6)
    e = C.cam(head, image[None])
    assert e.method == "cam" and e.targets.tolist() == [0]
    np.testing.assert_allclose(e.raw[0], cam_a, atol=1e-6)
    np.testing.assert_allclose(e.maps[0], cam_a, atol=1e-6)  # input size == map size: no resampling
    e = C.cam(head, np.stack([image, image]), target=[1, 0])
    np.testing.assert_allclose(e.raw, [cam_b, cam_a], atol=1e-6)
    assert e.targets.tolist() == [1, 0]


def test_weighted_sum_against_a_loop():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    w = rng.normal(size=(3, 6)).astype(np.float32)
    expected = np.zeros((3, 4, 5), np.float32)
    for n in range(3):
        for k in range(6):
            expected[n] += w[n, k] * maps[n, :, :, k]
    np.testing.assert_allclose(C.class_activation_map(maps, w), expected, atol=1e-5)
    got = C.class_activation_map(torch.from_numpy(maps), torch.from_numpy(w))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(C.class_activation_map(maps, w[0]), np.einsum("nhwk,k->nhw", maps, w[0]), atol=1e-5)
    with pytest.raises(ValueError, match="do not fit feature maps"):
        C.class_activation_map(maps, w[:, :5])


# ----------------------------------------------------------------------------------------------------
# Training a head on minivgg


@pytest.fixture(scope="module")
def minivgg():
    return models.load("minivgg", weights=None)


@pytest.fixture(scope="module")
def shapes():
    return data.make_shapes(48, seed=2)


@pytest.fixture(scope="module")
def head(minivgg, shapes):
    return C.train_cam_head(minivgg, shapes.images, shapes.labels, data.CLASSES, epochs=25, progress=False)


def test_head_trains_and_the_cam_identity_holds(head, minivgg, shapes):
    assert head.layer == "block5_conv3" and head.class_names == data.CLASSES
    assert head.features.shape == (48, 128) and head.weights.shape == (128, 6)
    # Random-weight features of 48 images, one global feature scale (see train_cam_head): learnt, well above
    # the 1/6 of chance, though not separated in 100 epochs.
    assert head.accuracy > 0.33
    e = C.cam(head, shapes.images[:6])
    assert e.maps.shape == (6, 96, 96) and e.raw.shape == (6, 6, 6)
    np.testing.assert_array_equal(e.maps, upsample(e.raw, (96, 96)))  # skimage bilinear, via attribution.upsample
    np.testing.assert_array_equal(C.cam(head, shapes.images[:6]).raw, e.raw)  # repeated calls: the same maps
    other = C.cam(head, shapes.images[:6], batch_size=4).raw  # other batches: the same up to float rounding
    np.testing.assert_allclose(other, e.raw, atol=1e-5 * np.abs(e.raw).max())
    logits = head.logits(shapes.images[:6])
    np.testing.assert_array_equal(e.targets, logits.argmax(1))  # default target: the head's prediction
    # CAM identity: the mean of the class-c map is the head's logit for c minus its bias
    lhs = e.raw.mean(axis=(1, 2))
    rhs = logits[np.arange(6), e.targets] - head.bias[e.targets]
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-4 * np.abs(rhs).max())
    for c in range(6):  # ... for every class, not only the predicted one
        lhs = C.cam(head, shapes.images[:2], target=c).raw.mean(axis=(1, 2))
        np.testing.assert_allclose(lhs, logits[:2, c] - head.bias[c], rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    # the folded standardisation: the Keras head model on raw features gives the same probabilities
    with torch.no_grad():
        probs = head.model(torch.from_numpy(head.features[:6])).cpu().numpy()
    np.testing.assert_allclose(probs, head.predict(shapes.images[:6]), atol=1e-5)


def test_training_touches_only_the_head(minivgg, shapes):
    before = [w.value.detach().cpu().numpy().copy() for w in minivgg.model.weights]
    state = torch.get_rng_state()
    h1 = C.train_cam_head(minivgg, shapes.images[:24], shapes.labels[:24], data.CLASSES, epochs=5, progress=False)
    after = [w.value.detach().cpu().numpy() for w in minivgg.model.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert not minivgg.model.trainable and all(not w.value.requires_grad for w in minivgg.model.weights)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG Keras shuffles with is given back
    # deterministic, and the cached features reproduce the run without the backbone
    h2 = C.train_cam_head(minivgg, None, shapes.labels[:24], data.CLASSES, epochs=5, progress=False, features=h1.features)
    np.testing.assert_array_equal(h1.weights, h2.weights)
    h3 = C.train_cam_head(minivgg, shapes.images[:24], shapes.labels[:24], data.CLASSES, epochs=5, seed=1, progress=False)
    assert not np.array_equal(h1.weights, h3.weights)


def test_other_layer_and_default_class_names(minivgg, shapes):
    h = C.train_cam_head(minivgg, shapes.images[:12], shapes.labels[:12] % 2, layer="block4_conv3", epochs=3,
                         progress=False)
    assert h.class_names == ("0", "1") and h.weights.shape == (64, 2)
    e = C.cam(h, shapes.images[:2], target=1)
    assert e.raw.shape == (2, 12, 12) and e.maps.shape == (2, 96, 96) and e.targets.tolist() == [1, 1]
    pre = C.cam(h, minivgg.tensor(shapes.images[:2]), target=1, preprocessed=True)
    np.testing.assert_array_equal(pre.raw, e.raw)


def test_bad_inputs_are_one_line_errors(minivgg, shapes, head):
    imgs, labels = shapes.images[:8], shapes.labels[:8]
    cases = [
        (dict(labels=labels[:7]), "got 8 images but labels of shape \\(7,\\): give one class index per image"),
        (dict(layer="nope"), "has no layer 'nope': choose one of"),
        (dict(layer="block5_pool"),
         "CAM needs a conv layer's feature maps, and 'block5_pool' is a MaxPooling2D: choose one of block1_conv1"),
        (dict(layer="fc1"), "'fc1' is a Dense"),
        (dict(labels=labels + 10), "labels must be class indices 0..5"),
        (dict(labels=labels.astype(float)), "labels must be integer class indices"),
        (dict(images=np.zeros((8, 32, 32, 3), np.uint8)), "takes RGB images of shape \\(N, 96, 96, 3\\)"),
    ]
    for change, message in cases:
        kwargs = dict(images=imgs, labels=labels, class_names=data.CLASSES, epochs=1, progress=False) | change
        with pytest.raises(ValueError, match=message) as e:
            C.train_cam_head(minivgg, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="class index 6 is out of range"):
        C.cam(head, imgs[:2], target=6)
    with pytest.raises(ValueError, match="got 3 targets for 2 images"):
        C.cam(head, imgs[:2], target=[0, 1, 2])
    with pytest.raises(ValueError, match="cam needs a CAMHead, got Backbone: train one with train_cam_head"):
        C.cam(minivgg, imgs[:2])


# ----------------------------------------------------------------------------------------------------
# VGG16 on a user's folders (random weights: shapes only)


def test_vgg16_on_labelled_folders(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    folder = data.load_folder(tmp_path, 224, progress=False)
    bb = models.load("vgg16", weights=None)
    head = C.train_cam_head(bb, folder.images, folder.labels, folder.class_names, epochs=2, batch_size=4, progress=False)
    assert head.class_names == ("cat", "dog") and head.weights.shape == (512, 2) and head.features.shape == (4, 512)
    e = C.cam(head, folder.images[1:3])
    assert e.maps.shape == (2, 224, 224) and e.raw.shape == (2, 14, 14)
    assert set(e.targets.tolist()) <= {0, 1} and np.isfinite(e.maps).all()


def test_a_head_read_off_a_keras_cam_model(minivgg):
    """CAMHead.from_model takes the last Dense layer's kernel and bias: the CAM identity holds for the Keras model."""
    base = keras.Model(minivgg.model.inputs, minivgg.model.get_layer("block5_conv3").output)
    rng = np.random.default_rng(1)
    dense = layers.Dense(6, activation="softmax")
    model = keras.Model(base.inputs, dense(layers.GlobalAveragePooling2D()(base.output)))
    dense.set_weights([rng.normal(size=(128, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32)])
    head = C.CAMHead.from_model(minivgg, model, "block5_conv3", data.CLASSES)
    images = data.make_shapes(2, seed=5).images
    with torch.no_grad():
        probs = keras.ops.convert_to_numpy(model(minivgg.tensor(images)))
    np.testing.assert_allclose(head.predict(images), probs, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="no Dense layer"):
        C.CAMHead.from_model(minivgg, base)
