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


def test_passes_split_a_batch_and_its_targets():
    from labkit.attribution import images_per_pass, passes

    assert images_per_pass(96, 96) == 16 and images_per_pass(224, 224) == 2
    assert images_per_pass(224, 224, "cuda") == 64 and images_per_pass(5000, 5000) == 1
    assert [(p.start, p.stop, t) for p, t in passes(5, 2)] == [(0, 2, None), (2, 4, None), (4, 5, None)]
    assert [t.tolist() for _, t in passes(3, 2, 7)] == [[7], [7]]
    assert [t.tolist() for _, t in passes(3, 2, [4, 5, 6])] == [[4, 5], [6]]
    for call, message in ((lambda: passes(3, 2, [1, 2]), "got 2 targets for 3 images"),
                          (lambda: passes(0, 2), "no images to explain")):
        with pytest.raises(ValueError, match=message):
            call()


def test_methods_give_the_same_maps_in_passes(tiny, monkeypatch):
    """A batch larger than a pass is split; the maps, the targets and the images seen do not change."""
    from labkit import attribution
    from labkit.guided_backprop import guided_backprop
    from labkit.saliency import saliency

    x = torch.randn(5, 8, 8, 3, generator=torch.Generator().manual_seed(11))
    for method in (saliency, guided_backprop):
        for target in (None, 1, [0, 1, 1, 0, 1]):
            net = tiny.net(size=8, seed=3)
            whole = method(net, x, target)
            assert net.calls == 1
            monkeypatch.setitem(attribution.PIXELS_PER_PASS, "cpu", 2 * 8 * 8)  # 2 images per pass
            net.calls = net.seen = 0
            split = method(net, x, target)
            monkeypatch.undo()
            assert net.calls == 3 and net.seen == 5
            assert np.array_equal(split.targets, whole.targets)
            np.testing.assert_allclose(split.raw, whole.raw, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(split.maps, whole.maps, rtol=1e-5, atol=1e-7)


def test_every_method_refuses_an_empty_batch(tiny):
    from labkit.gradcam import gradcam
    from labkit.guided_backprop import guided_backprop
    from labkit.occlusion import occlusion
    from labkit.saliency import saliency

    net = tiny.net(size=8, seed=3)
    empty = torch.zeros(0, 8, 8, 3)
    for method in (saliency, gradcam, guided_backprop, lambda m, x: occlusion(m, x, size=4, stride=4, progress=False)):
        with pytest.raises(ValueError, match="no images to explain"):
            method(net, empty)
