"""What every method shares: upsampling, targets, the input batch."""

import numpy as np
import pytest
import torch
from skimage.transform import resize

from labkit.attribution import prepare, resolve_targets, upsample


@pytest.mark.parametrize("low, size", [((6, 6), (96, 96)), ((14, 14), (224, 224)), ((5, 7), (33, 20)), ((3, 3), (3, 3))])
def test_torch_upsampling_is_skimages_bilinear(low, size):
    # Grad-CAM upsamples its torch maps with F.interpolate for speed; it must be the same sampling as the
    # course's skimage resize (half-pixel centres, edge clamping), also for ratios that are not integers.
    maps = np.random.default_rng(0).normal(size=(4, *low)).astype(np.float32)
    expected = np.stack([resize(m, size, order=1, mode="edge", anti_aliasing=False) for m in maps])
    ours = upsample(torch.from_numpy(maps), size)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float32 and ours.shape == (4, *size)
    # float32 arithmetic in torch, float64 in skimage: agreement to rounding of values of order 1
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    np.testing.assert_allclose(upsample(maps, size), expected, atol=1e-6)


def test_upsampling_returns_a_copy():
    t = torch.ones(1, 4, 4)
    out = upsample(t, (4, 4))
    out[:] = 0
    assert t.sum() == 16


def test_bicubic_goes_through_skimage():
    maps = np.random.default_rng(1).random((2, 6, 6)).astype(np.float32)
    expected = np.stack([resize(m, (24, 24), order=3, mode="edge", anti_aliasing=False) for m in maps])
    np.testing.assert_allclose(upsample(torch.from_numpy(maps), (24, 24), order=3), expected, atol=1e-6)


def test_targets_default_to_the_argmax_and_are_checked():
    scores = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0]])
    assert resolve_targets(None, scores).tolist() == [1, 0]
    assert resolve_targets(2, scores).tolist() == [2, 2]
    with pytest.raises(ValueError, match=r"out of range: the model has 3 classes \(0..2\)"):
        resolve_targets([0, 3], scores)
    with pytest.raises(ValueError, match="one per image"):
        resolve_targets([0, 1, 2], scores)


def test_uint8_pixels_for_a_torch_model_are_refused():
    with pytest.raises(ValueError, match=r"pass backbone.tensor\(images\)"):
        prepare(torch.nn.Identity(), np.zeros((1, 8, 8, 3), np.uint8))
