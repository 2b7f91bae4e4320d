"""Occlusion: a known answer on a one-pixel model, captum's Occlusion, invariance to batching, hygiene."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from labkit.occlusion import course_size, grid, occlusion, slider_values, starts

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


class HotPixel(nn.Module):
    """logits = [x[1, 5, R], 0]: p0 = sigmoid(x[1, 5, R]); no parameters at all."""

    def forward(self, x):
        v = x[:, 1, 5, 0]
        return torch.stack([v, torch.zeros_like(v)], dim=1)


def test_known_answer_one_hot_pixel():
    # 9x9 image of 2s, square 4, stride 2: ceil((9 - 4) / 2) + 1 = 4 positions per axis, starting at 0 2 4 6
    # (the last square, 6..9, is clipped to 6..8). Pixel (1, 5) lies in row squares {0} and column squares
    # {1 (2..5), 2 (4..7)}: those two squares give p0 = sigmoid(0) = 0.5, all the others sigmoid(2).
    s = 1 / (1 + np.exp(-2.0))
    e = occlusion(HotPixel(), torch.full((1, 9, 9, 3), 2.0), size=4, stride=2, progress=False)
    expected_raw = np.full((4, 4), s)
    expected_raw[0, 1] = expected_raw[0, 2] = 0.5
    assert e.targets.tolist() == [0]  # p0 = sigmoid(2) > 1/2
    np.testing.assert_allclose(e.raw[0], expected_raw, rtol=1e-6)
    # maps: mean over the covering squares. Squares covering row y: 1 for y in {0, 1, 8}, else 2 (same for x).
    cover = np.array([1, 1, 2, 2, 2, 2, 2, 2, 1])
    total = cover[:, None] * cover[None, :]
    hot = (np.arange(9) <= 3)[:, None] * ((np.arange(9) >= 2) & (np.arange(9) <= 5)).astype(int)[None, :]
    hot = hot + (np.arange(9) <= 3)[:, None] * ((np.arange(9) >= 4) & (np.arange(9) <= 7)).astype(int)[None, :]
    expected_maps = (hot * 0.5 + (total - hot) * s) / total
    np.testing.assert_allclose(e.maps[0], expected_maps, rtol=1e-6)
    assert e.maps[0, 1, 5] == pytest.approx(0.5) and e.maps[0, 2, 4] == pytest.approx((1 + 2 * s) / 4)
    other = occlusion(HotPixel(), torch.full((1, 9, 9, 3), 2.0), target=1, size=4, stride=2, progress=False)
    np.testing.assert_allclose(other.raw, 1 - e.raw, rtol=1e-6)


def test_known_answer_centred_squares():
    # The course's squares, centred on each pixel (stride 1), size 3: the hot pixel (1, 5) is hidden by the
    # squares centred on rows 0..2 and columns 4..6, and maps == raw (one square per pixel).
    s = 1 / (1 + np.exp(-2.0))
    e = occlusion(HotPixel(), torch.full((1, 9, 9, 3), 2.0), size=3, stride=1, centred=True, progress=False)
    expected = np.full((9, 9), s)
    expected[0:3, 4:7] = 0.5
    np.testing.assert_allclose(e.raw[0], expected, rtol=1e-6)
    np.testing.assert_allclose(e.maps[0], expected, rtol=1e-6)
    # Stride 2: centres 0 2 4 6 8 (ceil(9 / 2) = 5); those hiding (1, 5): rows {0, 2}, columns {4, 6}.
    # Each pixel takes its nearest centre's value (index (y + 1) // 2).
    e = occlusion(HotPixel(), torch.full((1, 9, 9, 3), 2.0), size=3, stride=2, centred=True, progress=False)
    expected = np.full((5, 5), s)
    expected[0:2, 2:4] = 0.5
    np.testing.assert_allclose(e.raw[0], expected, rtol=1e-6)
    nearest = (np.arange(9) + 1) // 2
    np.testing.assert_allclose(e.maps[0], expected[nearest][:, nearest], rtol=1e-6)


def test_centred_squares_are_the_corner_grid_shifted(tiny):
    """Away from the border a square centred on c is the corner square starting at c - size // 2."""
    net = tiny.net(size=12, seed=1)
    x = torch.randn(2, 12, 12, 3, generator=torch.Generator().manual_seed(3))
    corner = occlusion(net, x, size=5, stride=2, progress=False)  # corners 0 2 4 6 (+ 8, clipped)
    centred = occlusion(net, x, size=5, stride=2, centred=True, progress=False)  # centres 0 2 ... 10
    assert corner.raw.shape == (2, 5, 5) and centred.raw.shape == (2, 6, 6)
    assert np.array_equal(corner.targets, centred.targets)
    # centre 2 + 2a covers 2a .. 2a + 4, the corner square a, for a = 0..3 (corner 4 is clipped at 12)
    np.testing.assert_allclose(centred.raw[:, 1:5, 1:5], corner.raw[:, 0:4, 0:4], rtol=1e-5, atol=1e-6)
    assert not np.allclose(centred.raw[:, 0, 0], corner.raw[:, 0, 0])  # the border squares differ


def test_course_size():
    assert course_size(224) == 101 and course_size(96) == 43 and all(course_size(n) % 2 for n in range(16, 300))


@pytest.mark.parametrize("side", [96, 224])
def test_position_count_matches_the_notebook_formula_for_every_slider_value(side):
    """Stage 02 states n = ceil((H - size) / stride) + 1 (corner grid) and ceil(H / stride) (centred)."""
    values = slider_values(side)
    assert course_size(side) in values["size"]
    for size in values["size"]:
        for stride in values["stride"]:
            if stride <= size:
                first = starts(side, size, stride)
                assert len(first) == math.ceil((side - size) / stride) + 1
                assert first[-1] < side - size + stride and first[-1] + size >= side  # the last reaches the edge
                assert grid(side, size, stride).any(0).all()  # every pixel hidden by some square
            centres = starts(side, size, stride, centred=True)
            assert len(centres) == math.ceil(side / stride) and centres[-1] + size // 2 <= side - 1


def test_occlusion_uses_that_count():
    class Mean(nn.Module):
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([m, -m], 1)

    values = slider_values(96)
    for size, stride in [(s, 6) for s in values["size"][::5]] + [(48, t) for t in values["stride"][::5]]:
        for centred in (False, True):
            e = occlusion(Mean(), torch.ones(1, 96, 96, 3), size=size, stride=stride, centred=centred,
                          per_pass=256, progress=False)
            n = math.ceil(96 / stride) if centred else math.ceil((96 - size) / stride) + 1
            assert e.raw.shape == (1, n, n)


def test_grid_is_captums():
    g = grid(12, 4, 3)  # ceil(8 / 3) + 1 = 4 squares: 0..3, 3..6, 6..9, 9..11 (clipped)
    assert g.shape == (4, 12) and g.sum(1).tolist() == [4, 4, 4, 3] and g.any(0).all()


@pytest.mark.parametrize("size,stride", [(4, 3), (3, 3), (5, 2)])
def test_matches_captum_occlusion(tiny, size, stride):
    from captum.attr import Occlusion

    net = tiny.net(size=12, seed=1)
    x = torch.randn(2, 12, 12, 3, generator=torch.Generator().manual_seed(0))
    e = occlusion(net, x, size=size, stride=stride, progress=False)
    probs = lambda inp: torch.softmax(net(inp), dim=1)  # noqa: E731
    with torch.no_grad():
        p_orig = probs(x).gather(1, torch.as_tensor(e.targets)[:, None]).numpy()
    attr = Occlusion(probs).attribute(
        x, sliding_window_shapes=(size, size, 3), strides=(stride, stride, 3), baselines=0,
        target=torch.as_tensor(e.targets), perturbations_per_eval=64,
    )
    attr = attr.numpy()
    np.testing.assert_allclose(attr[..., 0], attr[..., 2], atol=0)  # the same across channels
    # captum attributes p_orig - p_occluded, averaged over the windows covering each pixel.
    np.testing.assert_allclose(p_orig[:, :, None] - e.maps, attr[..., 0], atol=2e-6)


def test_independent_of_per_pass_and_batch_and_counts_forwards(tiny):
    x = torch.randn(3, 12, 12, 3, generator=torch.Generator().manual_seed(1))
    ref = None
    for k in (1, 7, 200):
        net = tiny.net(size=12, seed=2)
        e = occlusion(net, x, size=4, stride=2, per_pass=k, progress=False)
        positions = e.raw.shape[1] * e.raw.shape[2]
        assert positions == 25
        # N unoccluded images and N * positions occluded copies, k per forward: nothing wasted.
        assert net.seen == 3 * (positions + 1) and net.calls == math.ceil(3 * (positions + 1) / k)
        if ref is None:
            ref = e
        # Equal up to float32 summation order: torch picks its conv kernels by batch size.
        np.testing.assert_allclose(e.raw, ref.raw, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(e.maps, ref.maps, rtol=1e-4, atol=1e-5)
        assert np.array_equal(e.targets, ref.targets)
    net = tiny.net(size=12, seed=2)  # a given target needs no unoccluded pass, and gives the same maps
    given = occlusion(net, x, target=ref.targets, size=4, stride=2, per_pass=7, progress=False)
    assert net.seen == 3 * 25 and net.calls == math.ceil(3 * 25 / 7)
    np.testing.assert_allclose(given.raw, ref.raw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(given.maps, ref.maps, rtol=1e-4, atol=1e-5)
    for i in range(3):  # each image alone
        one = occlusion(tiny.net(size=12, seed=2), x[i], size=4, stride=2, per_pass=5, progress=False)
        np.testing.assert_allclose(one.raw[0], ref.raw[i], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(one.maps[0], ref.maps[i], rtol=1e-4, atol=1e-5)


def test_fill_defaults_to_grey_and_may_be_per_channel(tiny):
    bb = tiny.keras(size=8, seed=3)
    twin = tiny.twin(bb)
    images = np.random.default_rng(4).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    k = occlusion(bb, images, size=3, stride=2, progress=False)  # fill: bb.grey = 0 after preprocessing
    t = occlusion(twin, bb.preprocess(images), size=3, stride=2, fill=0.0, progress=False)
    assert np.array_equal(k.targets, t.targets)
    np.testing.assert_allclose(k.raw, t.raw, atol=1e-5)
    np.testing.assert_allclose(k.maps, t.maps, atol=1e-5)
    colour = occlusion(twin, bb.preprocess(images), size=3, stride=2, fill=[1.0, -1.0, 0.5], progress=False)
    assert not np.allclose(colour.raw, t.raw)
    # A full-image square replaces everything by the fill colour: the map is that image's probability.
    full = occlusion(twin, torch.randn(1, 8, 8, 3), target=0, size=8, stride=8, fill=[1.0, -1.0, 0.5], progress=False)
    with torch.no_grad():
        p = torch.softmax(twin(torch.tensor([1.0, -1.0, 0.5]).expand(1, 8, 8, 3)), 1)[0, 0].item()
    assert full.raw.shape == (1, 1, 1) and full.raw[0, 0, 0] == pytest.approx(p, abs=1e-6)
    np.testing.assert_allclose(full.maps, p, atol=1e-6)


def test_default_square_is_an_eighth_of_the_image():
    class Mean(nn.Module):
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([m, -m], 1)

    e = occlusion(Mean(), torch.ones(1, 96, 96, 3), per_pass=256, progress=False)  # size 12, stride 6
    assert e.raw.shape == (1, 15, 15) and e.maps.shape == (1, 96, 96)


def test_hygiene(tiny):
    net = tiny.net(size=8, seed=5)
    x = torch.randn(2, 8, 8, 3, generator=torch.Generator().manual_seed(2))
    first = occlusion(net, x, size=4, stride=4, progress=False)
    for _ in range(100):
        e = occlusion(net, x, size=4, stride=4, progress=False)
        assert np.array_equal(e.maps, first.maps) and np.array_equal(e.raw, first.raw)
    assert tiny.hooks(net) == 0 and torch.is_grad_enabled()
    occlusion(net, x, size=4, stride=4, progress=True)  # the tqdm bar runs too


def test_bad_inputs(tiny):
    bb = tiny.keras(size=8, seed=6)
    net = tiny.net(size=8)
    x = torch.zeros(1, 8, 8, 3)
    cases = [
        (lambda: occlusion(net, x, size=9, progress=False), "larger than the image"),
        (lambda: occlusion(net, x, size=2, stride=3, progress=False), "stride .* must be at most size"),
        (lambda: occlusion(net, x, size=0, progress=False), "size must be a positive int"),
        (lambda: occlusion(net, x, size=2.5, progress=False), "size must be a positive int"),
        (lambda: occlusion(net, x, size=(2, 2, 2), progress=False), "size must be a positive int"),
        (lambda: occlusion(net, x, per_pass=0, progress=False), "per_pass must be a positive int"),
        (lambda: occlusion(net, x, fill=[0.0, 1.0], progress=False), "fill must be a number or 3 numbers"),
        (lambda: occlusion(bb, np.zeros((8, 9, 3), np.uint8), progress=False), "takes RGB images of shape"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    net.calls = 0
    with pytest.raises(ValueError, match="out of range"):
        occlusion(net, x, target=3, size=2, stride=1, per_pass=4, progress=False)
    assert net.calls == 1  # a bad target is caught after the first pass, not after all 49 squares


@pytest.mark.vgg16
def test_vgg16_shapes(vgg16):
    e = occlusion(vgg16, np.full((224, 224, 3), 90, np.uint8), size=112, stride=112, per_pass=5, progress=False)
    assert e.raw.shape == (1, 2, 2) and e.maps.shape == (1, 224, 224) and e.targets.shape == (1,)
    assert np.all((e.raw >= 0) & (e.raw <= 1))
