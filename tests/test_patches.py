"""Receptive fields (analytic vs back-propagated), streamed top-k (vs brute force), and patch cropping."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

import labkit  # noqa: F401  (pins the Keras backend)
import keras
from keras import layers

from labkit import data, models
from labkit import patches as P


# ----------------------------------------------------------------------------------------------------
# Receptive fields


# Published VGG16 receptive fields (size, stride); minivgg has VGG16's geometry at 96x96.
VGG16_FIELDS = {"block1_conv1": 3, "block1_conv2": 5, "block1_pool": 6, "block2_conv2": 14, "block3_conv3": 40,
                "block4_conv3": 92, "block5_conv3": 196, "block5_pool": 212}
VGG16_STRIDES = {"block1_conv1": 1, "block1_pool": 2, "block2_conv2": 2, "block3_conv3": 4, "block5_conv3": 16,
                 "block5_pool": 32}


def test_vgg_geometry_known_values():
    bb = models.load("minivgg", weights=None)
    for name, size in VGG16_FIELDS.items():
        assert P.receptive_field(bb, name).size == (size, size), name
    for name, stride in VGG16_STRIDES.items():
        assert P.receptive_field(bb, name).stride == (stride, stride), name
    f = P.receptive_field(bb, "block1_conv1")
    assert f.offset == (-1, -1)  # a 3x3 "same" conv pads one pixel
    assert f.box(0, 0) == (0, 2, 0, 2) and f.box(0, 0, clip=False) == (-1, 2, -1, 2)
    assert P.unit_field(f, 95, 95) == (94, 96, 94, 96)
    f5 = P.receptive_field(bb, "block5_conv3")
    assert f5.layer_size == (6, 6) and f5.input_size == (96, 96)
    assert f5.box(3, 3) == (0, 96, 0, 96)  # a 196-pixel field covers the whole 96x96 image


def _geometry_model(pool):
    """A little of everything: same/valid, odd sizes, strided 'same' convs (uneven padding), a dilated conv,
    non-square kernels, and pools with and without 'same' padding."""
    inp = keras.Input((23, 21, 2))
    x = layers.Conv2D(3, 3, padding="same", activation="relu", name="c1")(inp)
    x = pool(2, strides=2, name="p1")(x)  # 11x10
    x = layers.Conv2D(3, 3, strides=2, padding="same", activation="relu", name="c2")(x)  # 6x5, padding (1,1)/(0,1)
    x = layers.Conv2D(3, (2, 3), padding="valid", dilation_rate=(1, 2), activation="relu", name="c3")(x)  # 5x1
    x = layers.Conv2D(3, (3, 1), padding="same", activation="relu", name="c4")(x)
    x = pool((3, 1), strides=(2, 1), padding="same", name="p2")(x)  # 3x1
    return keras.Model(inp, x)


def _positive_weights(model):
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.uniform(0.1, 1.0, size=w.shape).astype(np.float32))


def _gradient_support(model, layer, i, j, x):
    """The input pixels whose gradient w.r.t. unit (i, j, channel 0) of ``layer`` is nonzero, as a bool (H, W) mask."""
    sub = keras.Model(model.inputs[0], model.get_layer(layer).output)
    xt = torch.tensor(x, requires_grad=True)
    sub(xt)[0, i, j, 0].backward()
    return (xt.grad[0].abs().sum(-1) > 0).numpy()


def _box_mask(box, shape):
    m = np.zeros(shape, bool)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize("layer", ["c1", "p1", "c2", "c3", "c4", "p2"])
def test_analytic_field_equals_backpropagated_field(layer):
    """Positive weights, biases and inputs: every ReLU is on and no gradient cancels, so the nonzero gradient
    of one unit is exactly its (clipped) receptive field. Average pools stand in for max pools here because a
    max pool sends the gradient to its argmax only; the geometry (kernel, stride, padding) is the same, and the
    max-pool model's gradient must still stay inside the box."""
    avg, mx = _geometry_model(layers.AveragePooling2D), _geometry_model(layers.MaxPooling2D)
    _positive_weights(avg)
    _positive_weights(mx)
    field = P.receptive_field(avg, layer)
    assert field == P.receptive_field(mx, layer)
    x = np.random.default_rng(1).uniform(0.5, 1.5, size=(1, 23, 21, 2)).astype(np.float32)
    h, w = field.layer_size
    units = {(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0), (h // 2, w // 2)}  # corners: clipped at the border
    for i, j in sorted(units):
        box = field.box(i, j)
        expected = _box_mask(box, (23, 21))
        np.testing.assert_array_equal(_gradient_support(avg, layer, i, j, x), expected, err_msg=f"{layer} unit {(i, j)}")
        inside = _gradient_support(mx, layer, i, j, x)
        assert inside.any() and not (inside & ~expected).any(), f"max-pool gradient left the box at {layer} {(i, j)}"


def test_field_reaches_into_padding_at_the_border():
    model = _geometry_model(layers.MaxPooling2D)
    f = P.receptive_field(model, "c2")
    # c1: 3x3 same (offset -1); p1: 2/2 valid; c2: 3x3 stride 2 'same' on 11 rows pads (1, 1), on 10 cols (0, 1)
    assert f.size == (3 + 1 * 1 + 2 * 2, 3 + 1 * 1 + 2 * 2)  # 3, then +(2-1)*1 (pool), then +(3-1)*2
    assert f.stride == (4, 4)
    assert f.offset == (-1 - 1 * 2, -1 - 0 * 2)  # rows get one padding row before, columns none
    assert f.box(0, 0, clip=False)[0] < 0 and f.box(0, 0)[0] == 0


def test_receptive_field_errors_are_one_line():
    bb = models.load("minivgg", weights=None)
    with pytest.raises(ValueError, match="has no layer 'nope': choose one of") as e:
        P.receptive_field(bb, "nope")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="'fc1' is not a spatial map.*block5_pool"):
        P.receptive_field(bb, "fc1")
    f = P.receptive_field(bb, "block1_pool")
    with pytest.raises(ValueError, match=r"outside layer 'block1_pool', whose map is 48x48"):
        f.box(48, 0)


# ----------------------------------------------------------------------------------------------------
# Streamed top-k


@pytest.fixture(scope="module")
def minivgg():
    return models.load("minivgg", weights=None)


@pytest.fixture(scope="module")
def shapes():
    return data.make_shapes(20, seed=5)


def _brute_force(bb, images, layer, channel, k):
    sub = keras.Model(bb.model.inputs[0], bb.layer(layer).output)
    with torch.no_grad():
        act = sub(bb.tensor(images))[..., channel].numpy()  # (N, h, w): ALL of it, as top_activations never does
    flat = act.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:k]  # ties to the lowest (image, i, j)
    n, i, j = np.unravel_index(order, act.shape)
    return [(int(a), (int(b), int(c)), float(flat[o])) for a, b, c, o in zip(n, i, j, order)]


@pytest.mark.parametrize("layer, channel", [("block2_conv1", 3), ("block3_pool", 7), ("block5_conv3", 0)])
def test_top_k_matches_brute_force(minivgg, shapes, layer, channel):
    expected = _brute_force(minivgg, shapes.images, layer, channel, 9)
    got = P.top_activations(minivgg, shapes.images, layer, channel, k=9, batch_size=7, progress=False)  # 7, 7, 6
    assert [(h.image, h.position) for h in got] == [(e[0], e[1]) for e in expected]
    np.testing.assert_allclose([h.value for h in got], [e[2] for e in expected], rtol=1e-6)
    assert all(a.value >= b.value for a, b in zip(got, got[1:]))
    # the batch size does not change the answer, nor does feeding batches from a generator
    assert P.top_activations(minivgg, shapes.images, layer, channel, k=9, batch_size=20, progress=False) == got
    gen = (shapes.images[s : s + 3] for s in range(0, 20, 3))
    assert P.top_activations(minivgg, gen, layer, channel, k=9, batch_size=64, progress=False) == got


def test_top_k_ties_and_small_maps(minivgg):
    """A dead channel (all zeros) is all ties: the first k units in (image, i, j) order, whatever the batches."""
    black = np.zeros((5, 96, 96, 3), np.uint8)
    model = keras.Sequential([keras.Input((4, 4, 1)), layers.Conv2D(1, 1, activation="relu", name="c")])
    model.get_layer("c").kernel.assign(-np.ones((1, 1, 1, 1), np.float32))  # relu(-x) = 0 for x >= 0
    x = np.ones((5, 4, 4, 1), np.float32)
    hits = P.top_activations(model, x, "c", 0, k=20, batch_size=2, progress=False)
    assert [(h.image, h.position) for h in hits] == [(n, (i, j)) for n in range(2) for i in range(4) for j in range(4)][:20]
    assert all(h.value == 0 for h in hits)
    assert len(P.top_activations(model, x[:1], "c", 0, k=100, progress=False)) == 16  # fewer units than k
    assert len(P.top_activations(minivgg, black, "block5_pool", 0, k=3, progress=False)) == 3


def test_top_k_holds_only_the_current_batch(minivgg, shapes):
    """Bounded memory, checked logically: when the generator is asked for batch t, every batch before t-1 is
    already garbage (only weak references to them are kept here), so nothing accumulates the activations."""
    refs, leaks = [], []

    def stream():
        for s in range(0, 12, 2):
            gc.collect()
            leaks.extend(t for t, r in enumerate(refs[:-2]) if r() is not None)
            batch = shapes.images[s : s + 2].copy()  # a fresh array, so only the consumer can keep it alive
            refs.append(weakref.ref(batch))
            yield batch
            del batch

    hits = P.top_activations(minivgg, stream(), "block3_conv1", 2, k=4, progress=False)
    assert len(refs) == 6 and not leaks
    assert hits == P.top_activations(minivgg, shapes.images[:12], "block3_conv1", 2, k=4, batch_size=12, progress=False)


def test_top_all_is_top_activations_for_every_channel_of_every_layer(minivgg, shapes):
    """One pass, every channel: the same hits, order and ties as the per-channel search (untrained minivgg
    has dead channels, all ties, and pooling layers repeat values: both orderings are exercised)."""
    names = ["block1_conv2", "block3_pool", "block5_conv3"]
    table = P.top_activations_all(minivgg, shapes.images[:8], names, k=5, batch_size=3, progress=False)
    assert list(table) == names
    for name in names:
        channels = int(minivgg.layer(name).output.shape[-1])
        assert len(table[name]) == channels
        for channel in range(0, channels, max(1, channels // 4)):  # a per-channel search is a pass each
            assert table[name][channel] == P.top_activations(minivgg, shapes.images[:8], name, channel, k=5, batch_size=3,
                                                              progress=False), (name, channel)
    assert P.top_activations_all(minivgg, shapes.images[:8], names, k=5, batch_size=8, progress=False) == table
    conv = P.top_activations_all(minivgg, shapes.images[:2], k=1, progress=False)
    assert list(conv) == minivgg.conv_layers()


def test_top_all_ties_like_top_activations():
    model = keras.Sequential([keras.Input((4, 4, 1)), layers.Conv2D(2, 1, activation="relu", name="c")])
    model.get_layer("c").kernel.assign(np.array([[[[-1.0, 1.0]]]], np.float32))  # channel 0 dead, 1 = x
    x = np.ones((5, 4, 4, 1), np.float32)
    table = P.top_activations_all(model, x, ["c"], k=20, batch_size=2, progress=False)
    for channel in (0, 1):
        assert table["c"][channel] == P.top_activations(model, x, "c", channel, k=20, batch_size=3, progress=False)
    with pytest.raises(ValueError, match="'fc2' is not a spatial map"):
        P.top_activations_all(models.load("minivgg", weights=None), x, ["fc2"], progress=False)


def test_top_k_bad_inputs(minivgg, shapes):
    with pytest.raises(ValueError, match="channel 16 is out of range: layer 'block2_conv1' has 16 channels"):
        P.top_activations(minivgg, shapes.images, "block2_conv1", 16, progress=False)
    with pytest.raises(ValueError, match="'fc2' is not a spatial map"):
        P.top_activations(minivgg, shapes.images, "fc2", 0, progress=False)
    with pytest.raises(ValueError, match="no layer 'blk'"):
        P.top_activations(minivgg, shapes.images, "blk", 0, progress=False)
    with pytest.raises(ValueError, match=r"takes RGB images of shape \(N, 96, 96, 3\)"):
        P.top_activations(minivgg, np.zeros((2, 50, 50, 3), np.uint8), "block1_conv1", 0, progress=False)


# ----------------------------------------------------------------------------------------------------
# Cropping


def test_patches_known_answer_and_padding():
    field = P.ReceptiveField("L", size=(5, 5), stride=(2, 2), offset=(-2, -2), input_size=(10, 10), layer_size=(5, 5))
    image = np.arange(100, dtype=np.uint8).reshape(10, 10, 1).repeat(3, axis=2)
    crops = P.patches([image], [(0, (0, 0), 1.0), (0, (2, 2), 0.5), (0, (4, 4), 0.1)], field, fill=255)
    assert crops.shape == (3, 5, 5, 3) and crops.dtype == np.uint8
    # unit (0, 0) sees rows/cols -2..2: the image's [0:3, 0:3] sits in the bottom-right of a grey canvas
    expected = np.full((5, 5), 255, np.uint8)
    expected[2:, 2:] = image[0:3, 0:3, 0]
    np.testing.assert_array_equal(crops[0, ..., 0], expected)
    np.testing.assert_array_equal(crops[1], image[2:7, 2:7])  # an interior unit: the plain crop
    expected = np.full((5, 5), 255, np.uint8)
    expected[:4, :4] = image[6:10, 6:10, 0]  # unit (4, 4): rows 6..10, one past the border
    np.testing.assert_array_equal(crops[2, ..., 0], expected)
    grid = P.patch_grid(crops, ncols=2, gap=1, fill=0)
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1, 3)
    np.testing.assert_array_equal(grid[:5, 6:], crops[1])


def test_patches_of_real_hits(minivgg, shapes):
    field = P.receptive_field(minivgg, "block3_conv3")
    hits = P.top_activations(minivgg, shapes.images, "block3_conv3", 5, k=6, progress=False)
    crops = P.patches(shapes.images, hits, field)
    assert crops.shape == (6, 40, 40, 3)
    for crop, hit in zip(crops, hits):
        y0, y1, x0, x1 = field.box(*hit.position)
        assert (crop == shapes.images[hit.image][y0:y1, x0:x1][0, 0]).all(-1).any()  # the real pixels are in there
    with pytest.raises(ValueError, match="pass the images the hits were found in"):
        P.patches(np.zeros((20, 50, 50, 3), np.uint8), hits, field)
