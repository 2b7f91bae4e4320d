"""labkit.evaluation: known answers on hand-made cases, the randomisation restores the backbone bit for bit,
randomising really changes the maps (no cache serves old weights), and the table's shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import labkit  # noqa: F401  (pins the Keras backend)
from labkit import evaluation as ev, models
from labkit.checks.base import one_thread


class WeightedMean(torch.nn.Module):
    """p(class 0) = sum_p w_p x_p / sum_p w_p over channel 0 of an NHWC batch; p(class 1) = 1 - that."""

    outputs_probabilities = True

    def __init__(self, weights):
        super().__init__()
        self.w = torch.as_tensor(weights, dtype=torch.float32)

    def forward(self, x):
        p = (x[..., 0] * self.w).sum((1, 2)) / self.w.sum()
        return torch.stack([p, 1 - p], dim=1)


W = np.array([[4.0, 3.0], [2.0, 1.0]]) / 10  # a 2 x 2 image; the weights are the known importances
ONES = np.ones((1, 2, 2, 3), np.float32)


def test_deletion_of_the_true_importance_has_the_known_curve_and_auc():
    curves = ev.deletion(WeightedMean(W), ONES, W[None], target=0, steps=4, fill="grey")
    np.testing.assert_allclose(curves.scores[0], [1.0, 0.6, 0.3, 0.1, 0.0], atol=1e-6)
    np.testing.assert_allclose(curves.fractions, [0, 0.25, 0.5, 0.75, 1.0])
    # trapezoid over [0, 1]: 0.25 * (1/2 + 0.6 + 0.3 + 0.1 + 0/2)
    assert curves.auc[0] == pytest.approx(0.375, abs=1e-6)


def test_deletion_in_the_wrong_order_scores_worse_and_insertion_mirrors_it():
    wrong = ev.deletion(WeightedMean(W), ONES, -W[None], target=0, steps=4)
    np.testing.assert_allclose(wrong.scores[0], [1.0, 0.9, 0.7, 0.4, 0.0], atol=1e-6)
    assert wrong.mean_auc == pytest.approx(0.625, abs=1e-6)
    ins = ev.insertion(WeightedMean(W), ONES, W[None], target=0, steps=4, fill="grey")
    np.testing.assert_allclose(ins.scores[0], [0.0, 0.4, 0.7, 0.9, 1.0], atol=1e-6)
    assert ins.mean_auc == pytest.approx(0.625, abs=1e-6)


def test_deletion_batches_do_not_change_the_numbers():
    rng = np.random.default_rng(0)
    w = rng.random((6, 5))
    x = rng.random((3, 6, 5, 3)).astype(np.float32)
    maps = rng.random((3, 6, 5))
    a = ev.deletion(WeightedMean(w), x, maps, target=0, steps=7, per_pass=1)
    b = ev.deletion(WeightedMean(w), x, maps, target=0, steps=7, per_pass=100)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    assert a.scores.shape == (3, 8)


def test_blur_baseline_keeps_a_uniform_image_and_grey_is_the_backbone_grey():
    x = torch.full((1, 8, 8, 3), 0.5)
    torch.testing.assert_close(ev.baseline_images(WeightedMean(np.ones((8, 8))), x, "blur"), x)
    assert float(ev.baseline_images(WeightedMean(np.ones((8, 8))), x, "grey").abs().max()) == 0.0
    with pytest.raises(ValueError, match="fill must be one of"):
        ev.baseline_images(None, x, "black")


def test_similarities_of_a_map_with_itself_are_one_and_of_its_reverse_minus_one():
    rng = np.random.default_rng(1)
    m = rng.random((2, 32, 32))
    assert ev.spearman(m, m).tolist() == pytest.approx([1.0, 1.0])
    assert ev.spearman(m, -m, absolute=False).tolist() == pytest.approx([-1.0, -1.0])
    assert ev.spearman(m, -m, absolute=True).tolist() == pytest.approx([1.0, 1.0])  # |.| forgets the sign
    assert ev.ssim(m, m).tolist() == pytest.approx([1.0, 1.0])
    assert ev.hog_similarity(m, m).tolist() == pytest.approx([1.0, 1.0])
    assert ev.spearman(m, 3 * m + 2).tolist() == pytest.approx([1.0, 1.0])  # ranks: any increasing map
    noise = rng.random((2, 32, 32))
    assert abs(ev.spearman(m, noise)).max() < 0.1


def test_spearman_agrees_with_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3, 7, 9)), rng.normal(size=(3, 7, 9))
    b[0] = a[0] + 0.3 * b[0]
    a[1, :2] = 0.0  # ties
    expected = [spearmanr(np.abs(x).ravel(), np.abs(y).ravel()).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(ev.spearman(a, b), expected, rtol=1e-10)


def test_baselines_know_nothing_of_the_model():
    from skimage.color import rgb2gray
    from skimage.filters import sobel

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (2, 9, 11, 3)).astype(np.uint8)
    model = WeightedMean(np.ones((9, 11)))
    x = (img / 255.0).astype(np.float32)
    c = ev.centre_map(model, x, target=0).maps
    assert np.unravel_index(c[0].argmax(), c[0].shape) == (4, 5)
    np.testing.assert_allclose(ev.edge_map(model, img, target=0).maps[1], sobel(rgb2gray(img[1] / 255.0)), rtol=1e-5)
    r1, r2 = ev.random_map(model, x, target=0).maps, ev.random_map(model, x, target=0).maps
    np.testing.assert_array_equal(r1, r2)  # the same seed, the same map
    assert ev.random_map(model, x, target=0, seed=1).maps.tolist() != r1.tolist()


@pytest.fixture(scope="module")
def backbone():
    return models.load("minivgg", weights=None)  # untrained: the tests are about weights, not accuracy


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(4).integers(0, 256, (2, 96, 96, 3)).astype(np.uint8)


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def test_randomisation_restores_the_weights_bit_for_bit_even_after_an_error(backbone, images):
    before = _weights(backbone.model)
    with one_thread():
        ev.cascading_randomisation(backbone, images[:1], {"edges": ev.edge_map}, layers=["predictions", "fc2"],
                                   progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(backbone.model)))
    with pytest.raises(ZeroDivisionError):
        with ev.restored(backbone):
            ev.randomise(backbone, "block1_conv1")
            assert not np.array_equal(before[0], backbone.model.get_weights()[0])
            1 / 0
    after = _weights(backbone.model)
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(before, after))


def test_randomise_is_deterministic_per_layer_and_seed(backbone):
    with ev.restored(backbone):
        ev.randomise(backbone, "fc2", seed=3)
        first = backbone.layer("fc2").get_weights()[0].copy()
        ev.randomise(backbone, "fc1", seed=3)
        ev.randomise(backbone, "fc2", seed=3)
        np.testing.assert_array_equal(first, backbone.layer("fc2").get_weights()[0])
        ev.randomise(backbone, "fc2", seed=4)
        assert not np.array_equal(first, backbone.layer("fc2").get_weights()[0])
    with pytest.raises(ValueError, match="no weights"):
        ev.randomise(backbone, "block1_pool")


def test_randomising_changes_every_methods_maps_no_cache_serves_old_weights(backbone, images):
    """Grad-CAM and the guided methods keep Keras sub-models and torch twins: after a randomisation their
    maps must come from the new weights (a twin cached on the Keras model would give the old maps)."""
    from labkit import guided_backprop

    methods = ev.method_functions(backbone, ("gradcam", "guided_backprop", "guided_gradcam", "saliency"))
    guided_backprop.guided_gradcam(backbone, images, target=0)  # fill any cache the library keeps
    with one_thread():
        r = ev.cascading_randomisation(backbone, images, methods, layers=["predictions", "fc2", "fc1", "block5_conv3",
                                       "block5_conv2"], target=[0, 1], progress=False)
    for method in methods:
        assert r.scores[method]["block5_conv2"]["spearman_abs"] < 0.999, method
        assert not np.allclose(r.explanations[method]["original"].maps, r.explanations[method]["block5_conv2"].maps)


def test_independent_randomisation_puts_each_layer_back(backbone, images):
    seen = []

    def record(model, imgs, target=None):
        seen.append([l.name for l in model.model.layers if l.weights and
                     not np.array_equal(l.get_weights()[0], original[l.name])])
        return ev.edge_map(model, imgs, target)

    original = {l.name: l.get_weights()[0].copy() for l in backbone.model.layers if l.weights}
    ev.independent_randomisation(backbone, images[:1], {"rec": record}, layers=["fc2", "block1_conv1"], progress=False)
    assert seen == [[], ["fc2"], ["block1_conv1"]]
    seen.clear()
    ev.cascading_randomisation(backbone, images[:1], {"rec": record}, layers=["fc2", "block1_conv1"], progress=False)
    assert seen == [[], ["fc2"], ["block1_conv1", "fc2"]]
    with pytest.raises(ValueError, match="from the top down"):
        ev.cascading_randomisation(backbone, images[:1], {"rec": record}, layers=["block1_conv1", "fc2"], progress=False)


def test_baselines_are_unchanged_by_randomisation(backbone, images):
    r = ev.cascading_randomisation(backbone, images[:1], ev.baseline_functions(), layers=["predictions", "block1_conv1"],
                                   progress=False)
    for name in ev.BASELINES:
        assert r.scores[name]["block1_conv1"]["spearman_abs"] == pytest.approx(1.0)


def test_data_randomisation_of_a_model_with_itself_is_one(backbone, images):
    out = ev.data_randomisation(backbone, backbone, images, lambda m: ev.method_functions(m, ("gradcam", "saliency")))
    for scores in out.values():
        assert scores["spearman_abs"] == pytest.approx(1.0)
        assert scores["ssim"] == pytest.approx(1.0)
