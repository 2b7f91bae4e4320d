"""Check for stage 04 (CAM): the student's ``class_activation_map(feature_maps, weights, c)``.

The exercise: feature maps M (h, w, K) of one image, the CAM head's Dense kernel W (K, C) and a class c
give the class activation map ``CAM_c = sum_k W[k, c] M_k``, (h, w), no bias, no ReLU, no normalisation.
The reference is :func:`labkit.cam.class_activation_map`.

    ok = checks.cam(class_activation_map, head, image)

The check runs the function on small hand-made cases first: a square kernel (K == C, so that taking
row c instead of column c gives an answer of the right shape, which can then be recognised), then a
non-square one. With a trained ``head`` and one ``image`` it also runs it on that backbone's real
feature maps, for every class of the head.
"""

from __future__ import annotations

import numpy as np

from .base import Hint, as_array, call_student, close, match, report

STAGE = "04 CAM"
WHAT = "class_activation_map(feature_maps, weights, c)"

HINT_RELU = ("your map has no negative values, but the weighted sum has some: CAM keeps the negative evidence "
             "(no ReLU, no clipping)")
HINT_BIAS = ("your map is off by the same constant at every position: the bias belongs to the head's logit, "
             "not to the map (leave it out)")
HINT_MEAN = ("your map is K times too small (K = the number of feature maps): CAM sums the weighted feature maps "
             "over k, it does not average them")
HINT_ROW = ("you took class c's weights from row c of the kernel: weights is (K, C), one row per feature map and "
            "one column per class")
HINT_ALL = ("your map combines the weights of every class (it is the same whatever c is): use only the weights "
            "of class c")
HINT_NORMALISED = ("your map is rescaled (to [0, 1], or by its largest value): CAM is the raw weighted sum; "
                   "normalise only when you draw it")
HINT_INPLACE = "your function changed its input arrays in place: compute the map without modifying feature_maps or weights"
HINT_SHAPE = ": one value per feature-map position (upsampling to the image size is for the figure, not for this function)"


def reference(feature_maps: np.ndarray, weights: np.ndarray, c: int) -> np.ndarray:
    """The CAM of class c for one image: labkit.cam's weighted sum, (h, w, K) and (K, C) -> (h, w)."""
    from .. import cam as lkcam

    fm = np.asarray(feature_maps, np.float64)
    return lkcam.class_activation_map(fm[None], np.asarray(weights, np.float64)[:, c][None])[0]


def mutants(feature_maps: np.ndarray, weights: np.ndarray, c: int, bias=None) -> list[tuple[str, np.ndarray]]:
    """(hint, answer) for each mistake the check recognises and that is detectable on this case."""
    fm, w = np.asarray(feature_maps, np.float64), np.asarray(weights, np.float64)
    k, n_classes = w.shape
    ref = fm @ w[:, c]
    out = []
    if ref.min() < 0:
        out.append((HINT_RELU, np.maximum(ref, 0.0)))
    if bias is not None:
        out.append((HINT_BIAS, ref + float(np.asarray(bias)[c])))
    if k > 1:
        out.append((HINT_MEAN, ref / k))
    if k == n_classes:
        out.append((HINT_ROW, fm @ w[c, :]))
    if n_classes > 1:
        out.append((HINT_ALL, fm @ w.sum(axis=1)))
    lo, hi, top = ref.min(), ref.max(), np.abs(ref).max()
    if hi > lo:
        out.append((HINT_NORMALISED, (ref - lo) / (hi - lo)))
    if top > 0:
        out.append((HINT_NORMALISED, ref / top))
    return out


def _check_one(fn, feature_maps, weights, c, bias=None, where: str = "") -> np.ndarray:
    fm_in, w_in = feature_maps.copy(), weights.copy()
    answer = as_array(call_student(fn, fm_in, w_in, c, what=WHAT), WHAT)
    if not (np.array_equal(fm_in, feature_maps) and np.array_equal(w_in, weights)):
        raise Hint(HINT_INPLACE)
    ref = reference(feature_maps, weights, c)
    if close(answer, ref):
        return answer
    for hint, wrong in mutants(feature_maps, weights, c, bias):
        if close(answer, wrong):
            raise Hint(hint)
    if answer.shape == ref.shape:
        # off by one constant everywhere: a bias, wherever the student found one
        diff = answer - ref
        if np.ptp(diff) <= 1e-4 * max(1.0, float(np.abs(ref).max())):
            raise Hint(HINT_BIAS)
    match(answer, ref, {}, f"{WHAT}{where}", shape_hint=HINT_SHAPE)  # the generic shape / difference hint
    return answer


def _cases():
    """Small hand-made cases: post-ReLU feature maps (>= 0, some zeros) and signed weights."""
    rng = np.random.default_rng(4)
    out = []
    for h, w, k, n_classes in ((3, 4, 5, 5), (4, 3, 7, 3)):  # square kernel first: row c vs column c is visible
        fm = np.maximum(rng.normal(0.3, 1.0, size=(h, w, k)), 0.0)
        weights = rng.normal(0.0, 1.0, size=(k, n_classes))
        out.append((fm, weights))
    return out


def _feature_maps(head, image) -> np.ndarray:
    """The (h, w, K) feature maps of ``head.layer`` for one RGB image."""
    import keras
    import torch

    bb = head.backbone
    image = np.asarray(image)
    if image.ndim == 4:
        image = image[0]
    bb.check_images(image)
    sub = keras.Model(bb.model.inputs[0], bb.layer(head.layer).output)
    with torch.no_grad():
        return sub(bb.tensor(image[None]))[0].float().cpu().numpy().astype(np.float64)


def cam(class_activation_map, head=None, image=None) -> bool:
    """Stage 04: ``class_activation_map(feature_maps (h, w, K), weights (K, C), c) -> (h, w)``.

    ``head`` (a :class:`labkit.cam.CAMHead`) and ``image`` (one RGB image at the backbone's size) are
    optional: with them the function is also run on that head's real feature maps, for every class.
    """
    from .. import cam as lkcam

    if head is not None and not isinstance(head, lkcam.CAMHead):
        raise TypeError(f"checks.cam takes a CAMHead from cam.train_cam_head as head, got {type(head).__name__}")
    if (head is None) != (image is None):
        raise TypeError("checks.cam needs both head and image, or neither")

    def run() -> str:
        for fm, weights in _cases():
            for c in range(weights.shape[1]):
                _check_one(class_activation_map, fm, weights, c)
        if head is None:
            return "the weighted sum of class c's feature maps, on small test cases"
        fm = _feature_maps(head, image)
        weights = head.weights.astype(np.float64)
        for c in range(head.num_classes):
            _check_one(class_activation_map, fm, weights, c, bias=head.bias,
                       where=f" on {head.backbone.name}'s {head.layer} maps, class {head.class_names[c]!r},")
        h, w, k = fm.shape
        return (f"the weighted sum of class c's feature maps; on {head.backbone.name}'s {head.layer} maps "
                f"({h}x{w}, K={k}) it gives the head's CAM for all {head.num_classes} classes")

    return report(STAGE, run)
