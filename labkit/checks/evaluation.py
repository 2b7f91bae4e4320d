"""Checks for stage 08 (evaluating explanations): the deletion curve and its AUC, the cascading loop.

    ok = checks.deletion_curve(deletion_curve, area_under_curve, backbone, image, importance, target)
    ok = checks.cascading_randomisation(cascading_maps)

**Deletion** (Petsiuk et al., RISE): ``deletion_curve(score, image, importance, fill, steps)`` takes a
function ``score(batch) -> (B,)`` (the target class's probability of each image of a batch), one
preprocessed image (H, W, 3), its importance map (H, W), the baseline image ``fill`` (H, W, 3) whose pixels
replace the removed ones, and the number of steps; it returns the ``steps + 1`` scores with 0, 1/steps,
..., all of the pixels removed, most important first, computed with ONE call of ``score`` on the batch of
the ``steps + 1`` images. ``area_under_curve(curve)`` is its area over x = fraction of pixels in [0, 1]
(the trapezoid rule).

**Cascading randomisation** (Adebayo et al.): ``cascading_maps(backbone, images, explain, layers, seed)``
randomises ``layers`` in order with ``labkit.evaluation.randomise(backbone, layer, seed)``, the earlier ones
staying random, and returns the list of ``explain(backbone, images)`` after each; the backbone's weights
must be as they were afterwards (``labkit.evaluation.restored``).
"""

from __future__ import annotations

import numpy as np

from .base import Hint, as_array, call_student, close, match, one_thread, report

STAGE = "08 evaluating explanations"
WHAT_CURVE = "deletion_curve(score, image, importance, fill, steps)"
WHAT_AUC = "area_under_curve(curve)"
WHAT_CASCADE = "cascading_maps(backbone, images, explain, layers, seed)"

HINT_ORDER = ("your curve removes the LEAST important pixels first: sort the map so that the largest values come "
              "first (np.argsort sorts up)")
HINT_COUNT = ("your curve has one value per step but misses a point: return steps + 1 scores, from nothing removed "
              "(the original image) to every pixel removed")
HINT_NOT_CUMULATIVE = ("after step k your image has only the k-th group of pixels removed: deletion keeps removing, "
                       "so step k has all of the first k * (H*W) / steps pixels of the order removed")
HINT_ZERO_FILL = ("your removed pixels became 0: they must take the value of the baseline image `fill` at the same "
                  "place (grey is not always 0, and a blurred baseline differs from pixel to pixel)")
HINT_CHANNELS = ("you removed single colour values instead of whole pixels: the map ranks the H*W pixels, and a "
                 "removed pixel loses all 3 of its channels (index the image as (H*W, 3))")
HINT_INSERTION = ("your curve starts from the baseline and puts pixels back: that is insertion; deletion starts "
                  "from the image and removes pixels")
HINT_INPLACE = "your function changed the image passed in: work on copies"
HINT_ONE_CALL = ("you called score {calls} times: stack the steps + 1 images into one batch (np.stack) and call "
                 "score once; batched forward passes are what makes the metric affordable")
HINT_NOT_ARRAY = "score returns one number per image of the batch: return those numbers, shape (steps + 1,)"
HINT_AUC_SUM = ("your area is the plain sum of the scores: the x axis is the fraction of pixels, from 0 to 1, so "
                "each step is 1/steps wide")
HINT_AUC_DX = ("your area uses steps 1 wide: the x axis is the fraction of pixels removed, from 0 to 1, so a step "
               "is 1/steps wide (np.trapezoid(curve, dx=...))")
HINT_AUC_MEAN = ("your area is the mean of the points: the trapezoid rule counts the first and the last point half "
                 "(np.trapezoid)")
HINT_AUC_FLIP = "your area is 1 minus the area under the curve: return the area under it"

HINT_INDEPENDENT = ("each of your maps has only its own layer random: in the cascade, the layers randomised before "
                    "stay random (do not restore the weights inside the loop)")
HINT_BEFORE = ("your maps are one step late: the first one is the original model's. Randomise the layer first, then "
               "explain")
HINT_REVERSED = "your cascade runs in the wrong direction: randomise the layers in the order given (from the top down)"
HINT_SEED = "pass the seed on to evaluation.randomise(backbone, layer, seed): the check asks for a particular one"
HINT_ALL_AT_ONCE = ("all your maps are those of the fully randomised model: explain after EACH layer, inside the "
                    "loop")
HINT_NOT_RESTORED = ("the backbone still has random weights after your function: wrap the loop in "
                     "`with evaluation.restored(backbone):` so that the weights come back, even after an error")
HINT_LIST = "return a list with one map batch per layer of `layers`"


# ----------------------------------------------------------------------------------------------------
# Deletion curve


def reference_curve(score, image, importance, fill, steps) -> np.ndarray:
    from ..evaluation import step_counts

    h, w, c = image.shape
    order = np.argsort(-importance.ravel(), kind="stable")
    batch = []
    for k in step_counts(h * w, steps):
        x = image.reshape(-1, c).copy()
        x[order[:k]] = fill.reshape(-1, c)[order[:k]]
        batch.append(x.reshape(h, w, c))
    return np.asarray(score(np.stack(batch)), np.float64)


def curve_mutants(score, image, importance, fill, steps) -> list[tuple[str, np.ndarray]]:
    from ..evaluation import step_counts

    h, w, c = image.shape
    order = np.argsort(-importance.ravel(), kind="stable")
    counts = step_counts(h * w, steps)

    def build(order=order, counts=counts, fill=fill, cumulative=True, flat=False, start=image, end=None):
        end = fill if end is None else end
        batch = []
        for i, k in enumerate(counts):
            lo = 0 if cumulative or i == 0 else counts[i - 1]
            if flat:  # indices into the (H*W*3) values
                x = start.ravel().copy()
                x[order[lo:k]] = end.ravel()[order[lo:k]]
            else:
                x = start.reshape(-1, c).copy()
                x[order[lo:k]] = end.reshape(-1, c)[order[lo:k]]
            batch.append(x.reshape(h, w, c))
        return np.asarray(score(np.stack(batch)), np.float64)

    return [
        (HINT_ORDER, build(order=order[::-1])),
        (HINT_ORDER, build(order=np.argsort(importance.ravel(), kind="stable"))),
        (HINT_COUNT, build(counts=counts[1:])),
        (HINT_COUNT, build(counts=counts[:-1])),
        (HINT_NOT_CUMULATIVE, build(cumulative=False)),
        (HINT_ZERO_FILL, build(fill=np.zeros_like(fill))),
        (HINT_CHANNELS, build(flat=True)),
        (HINT_INSERTION, build(order=order, start=fill, end=image)),
    ]


def _curve_cases():
    """A smooth score of all three channels (tanh of a fixed linear map), a 4 x 6 image, 6 and 4 steps."""
    rng = np.random.default_rng(8)
    out = []
    for (h, w), steps in (((4, 6), 6), ((6, 4), 4)):
        weights = rng.normal(size=(h, w, 3))

        def score(batch, weights=weights):
            batch = np.asarray(batch, np.float64)
            return 1 / (1 + np.exp(-(batch * weights).sum(axis=(1, 2, 3))))

        image = rng.normal(size=(h, w, 3))
        importance = rng.permutation(h * w).reshape(h, w).astype(np.float64)  # no ties
        fill = rng.normal(0.3, 0.2, size=(h, w, 3))  # not constant, not zero: like a blurred baseline
        out.append((score, image, importance, fill, steps))
    return out


class _Counted:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, batch):
        self.calls += 1
        return self.fn(batch)


def _check_curve(fn, score, image, importance, fill, steps, where=""):
    counted = _Counted(score)
    img_in, imp_in, fill_in = image.copy(), importance.copy(), fill.copy()
    answer = as_array(call_student(fn, counted, img_in, imp_in, fill_in, steps, what=WHAT_CURVE), WHAT_CURVE)
    if not (np.array_equal(img_in, image) and np.array_equal(imp_in, importance) and np.array_equal(fill_in, fill)):
        raise Hint(HINT_INPLACE)
    ref = reference_curve(score, image, importance, fill, steps)
    if close(answer, ref):
        if counted.calls != 1:
            raise Hint(HINT_ONE_CALL.format(calls=counted.calls))
        return answer
    for hint, wrong in curve_mutants(score, image, importance, fill, steps):
        if close(answer, wrong):
            raise Hint(hint)
    match(answer, ref, {}, f"{WHAT_CURVE}{where}", shape_hint=" (steps + 1 scores)")
    return answer


def auc_mutants(curve) -> list[tuple[str, float]]:
    curve = np.asarray(curve, np.float64)
    steps = len(curve) - 1
    ref = float(np.trapezoid(curve, dx=1 / steps))
    return [
        (HINT_AUC_SUM, float(curve.sum())),
        (HINT_AUC_SUM, float(curve.sum() / steps)),
        (HINT_AUC_DX, float(np.trapezoid(curve))),
        (HINT_AUC_MEAN, float(curve.mean())),
        (HINT_AUC_FLIP, 1.0 - ref),
    ]


def _check_auc(fn, curve):
    value = call_student(fn, np.array(curve), what=WHAT_AUC)
    answer = as_array(value, WHAT_AUC)
    ref = float(np.trapezoid(np.asarray(curve, np.float64), dx=1 / (len(curve) - 1)))
    if answer.size != 1:
        raise Hint(f"{WHAT_AUC} returned {answer.size} numbers: return one number, the area")
    if close(answer.reshape(()), ref):
        return float(answer)
    for hint, wrong in auc_mutants(curve):
        if close(answer.reshape(()), wrong):
            raise Hint(hint)
    raise Hint(f"{WHAT_AUC} gave {float(answer):.4g}, not the area under the curve: use the trapezoid rule over x "
               "from 0 to 1")


def deletion_curve(fn, auc_fn, backbone=None, image=None, importance=None, target=None, steps: int = 16) -> bool:
    """Check ``deletion_curve`` and ``area_under_curve`` on hand-made cases and, given a backbone, an image,
    its importance map and a target class, against ``labkit.evaluation.deletion`` (grey baseline)."""

    def run():
        with one_thread():
            for case in _curve_cases():
                _check_curve(fn, *case)
            for curve in ([1.0, 0.6, 0.3, 0.1, 0.0], [0.2, 0.9, 0.5, 0.7, 0.4, 0.1, 0.8]):
                _check_auc(auc_fn, curve)
            if backbone is None:
                return "deletion curve and its area on the hand-made cases"
            import torch

            from .. import evaluation
            from ..attribution import class_scores

            x = backbone.tensor(image)[0]
            fill = evaluation.baseline_images(backbone, x[None], "grey")[0]

            def score(batch):
                with torch.no_grad():
                    b = torch.as_tensor(np.asarray(batch), dtype=torch.float32, device=backbone.device)
                    return class_scores(backbone, b, "probability")[:, int(target)].cpu().numpy()

            x_np, fill_np = x.cpu().numpy(), fill.cpu().numpy()
            # ties (a ReLU'd map has many zeros) may be ordered either way: make the order unique first
            order = np.argsort(-np.asarray(importance, np.float64).ravel(), kind="stable")
            imp = np.empty(order.size, np.float32)
            imp[order] = np.arange(order.size, 0, -1)
            imp = imp.reshape(np.shape(importance))
            answer = _check_curve(fn, score, x_np, imp, fill_np, steps, where=f" on {backbone.name}")
            lib = evaluation.deletion(backbone, image, imp[None], target=int(target), steps=steps, fill="grey")
            if not close(answer, lib.scores[0], rtol=1e-3, atol=1e-4):
                raise Hint(f"{WHAT_CURVE} on {backbone.name} differs from labkit.evaluation.deletion: check the "
                           "number of pixels removed at each step (k * H * W / steps)")
            area = as_array(call_student(auc_fn, answer, what=WHAT_AUC), WHAT_AUC)
            return (f"deletion curve and its area; on {backbone.name} the area is {float(area):.3f} "
                    f"(labkit.evaluation.deletion: {lib.auc[0]:.3f})")

    return report(STAGE, run)


# ----------------------------------------------------------------------------------------------------
# Cascading randomisation


def tiny_backbone():
    """A Backbone around the checks' tiny Keras CNN (8 x 8 images, 4 classes)."""
    from ..checks.base import tiny_keras_cnn
    from ..models import Backbone

    return Backbone(name="tiny", model=tiny_keras_cnn(), class_names=("a", "b", "c", "d"), input_size=(8, 8),
                    last_conv_layer="conv2", grey=0.0, _preprocess=lambda x: x / 127.5 - 1.0,
                    _deprocess=lambda x: (x + 1.0) * 127.5)


def _explain(backbone, images):
    from ..saliency import saliency

    return saliency(backbone, images, target=1).maps


def cascade_mutants(backbone, images, layers, seed):
    """(hint, answer) for each mistake, computed with the library's own randomise/restored."""
    from ..evaluation import randomise, restored

    def run(order, cumulative=True, explain_first=False, seed_=seed, all_at_once=False):
        out = []
        with restored(backbone):
            if all_at_once:
                for layer in order:
                    randomise(backbone, layer, seed_)
            for layer in order:
                if explain_first:
                    out.append(_explain(backbone, images))
                with restored(backbone) if not cumulative else _nothing():
                    if not all_at_once:
                        randomise(backbone, layer, seed_)
                    if not explain_first:
                        out.append(_explain(backbone, images))
        return np.stack(out)

    return run(layers), [
        (HINT_INDEPENDENT, run(layers, cumulative=False)),
        (HINT_BEFORE, run(layers, explain_first=True)),
        (HINT_REVERSED, run(layers[::-1])[::-1]),
        (HINT_REVERSED, run(layers[::-1])),
        (HINT_SEED, run(layers, seed_=0)),
        (HINT_ALL_AT_ONCE, run(layers, all_at_once=True)),
    ]


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def cascading_randomisation(fn) -> bool:
    """Check ``cascading_maps`` on the tiny CNN: the maps after each step of the cascade, and the weights
    restored bit for bit afterwards."""

    def run():
        from ..evaluation import restored

        backbone = tiny_backbone()
        images = np.random.default_rng(9).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
        layers = ["predictions", "fc1", "conv2"]
        seed = 3
        with one_thread():
            before = [w.copy() for w in backbone.model.get_weights()]
            with restored(backbone):  # the tiny model is shared: put it back whatever the student does
                value = call_student(fn, backbone, images, _explain, list(layers), seed, what=WHAT_CASCADE)
                changed = not all(np.array_equal(a, b) for a, b in zip(before, backbone.model.get_weights()))
            if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != len(layers):
                raise Hint(HINT_LIST + f" (got {type(value).__name__}"
                           + (f" of length {len(value)})" if hasattr(value, "__len__") else ")"))
            answer = np.stack([as_array(v, WHAT_CASCADE) for v in value])
            ref, mutants = cascade_mutants(backbone, images, layers, seed)
            if not close(answer, ref):
                for hint, wrong in mutants:
                    if close(answer, wrong):
                        raise Hint(hint)
                match(answer, ref, {}, WHAT_CASCADE)
            if changed:
                raise Hint(HINT_NOT_RESTORED)
        return f"cascading randomisation of {len(layers)} layers, top down, weights restored bit for bit"

    return report(STAGE, run)
