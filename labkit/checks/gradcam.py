"""Check for stage 05 (Grad-CAM): the student's ``gradcam_from(activations, gradients)``.

The exercise: the feature maps A and the gradients dy^c/dA of a conv layer, both (N, h, w, K) (NHWC, as
Keras lays them out), give the Grad-CAM maps (N, h, w)::

    alpha_k = mean over (i, j) of dy^c/dA^k_ij        map = ReLU(sum_k alpha_k A^k)

The reference is labkit.gradcam's (:meth:`labkit.gradcam.GradCAM.channel_weights` and
:func:`labkit.gradcam.combine`).

    ok = checks.gradcam(gradcam_from, backbone, images)

The check runs the function on small hand-made cases (two images, h, w and K all different, so that a
mean over the wrong axes gives a recognisable answer or a wrong shape). With a ``backbone`` and
``images`` it also runs it on that backbone's real activations and gradients at its last conv layer.
"""

from __future__ import annotations

import numpy as np

from .base import Hint, as_array, call_student, close, match, report

STAGE = "05 Grad-CAM"
WHAT = "gradcam_from(activations, gradients)"

HINT_CHANNELS = ("your alphas were averaged over the channels (the last axis): alpha_k is one number per channel k "
                 "of each image, the mean of its gradients over the positions (i, j)")
HINT_BATCH = ("your alphas were averaged over the images too: each image has its own alphas, the mean over its own "
              "positions (i, j) only")
HINT_RELU = "your map has negative values: Grad-CAM keeps only the positive part of the weighted sum (a ReLU at the end)"
HINT_RELU_ALPHAS = ("you clipped the alphas: negative channel weights count too; the ReLU comes after the weighted sum")
HINT_MAX = ("your alphas look like the largest gradient over the positions: Grad-CAM averages the gradients over "
            "the positions (global average pooling)")
HINT_SUM = ("your map is h*w times too large: the alphas are the MEAN of the gradients over the positions, "
            "not their sum")
HINT_ACTIVATIONS = ("your channel weights come from the feature maps themselves: alpha_k is the spatial mean of the "
                    "GRADIENTS dy^c/dA^k")
HINT_WEIGHTED_GRADIENTS = ("you summed weighted gradients: the weighted sum is over the feature maps A^k, with the "
                           "alphas as the weights")
HINT_NO_POOLING = ("you multiplied each position's gradient with the activation there: Grad-CAM first averages the "
                   "gradients over the positions into one weight per channel")
HINT_NORMALISED = ("your map is rescaled (to [0, 1], or by its largest value): return the raw ReLU of the weighted "
                   "sum; normalise only when you draw it")
HINT_INPLACE = ("your function changed its input arrays in place: compute the map without modifying activations or "
                "gradients")
HINT_SHAPE = (": one map per image, one value per feature-map position (the channel axis is summed away; "
              "upsampling is for the figure)")


def reference(activations, gradients) -> np.ndarray:
    """Grad-CAM maps (N, h, w) from NHWC activations and gradients, with labkit.gradcam's own code."""
    import torch

    from .. import gradcam as lkgc

    a = torch.as_tensor(np.asarray(activations, np.float64)).permute(0, 3, 1, 2)  # labkit.gradcam is NCHW
    g = torch.as_tensor(np.asarray(gradients, np.float64)).permute(0, 3, 1, 2)
    weights = lkgc.GradCAM.channel_weights(None, a, g, None, None)
    return lkgc.combine(a, weights).numpy()


def _relu(x):
    return np.maximum(x, 0.0)


def mutants(activations, gradients) -> list[tuple[str, np.ndarray]]:
    """(hint, answer) for each mistake the check recognises, on this case."""
    a, g = np.asarray(activations, np.float64), np.asarray(gradients, np.float64)
    n, h, w, k = a.shape
    alphas = g.mean(axis=(1, 2))  # (N, K)
    weighted = np.einsum("nhwk,nk->nhw", a, alphas)
    ref = _relu(weighted)
    out = [
        (HINT_CHANNELS, _relu((a * g.mean(axis=3, keepdims=True)).sum(axis=3))),
        (HINT_RELU, weighted),
        (HINT_RELU_ALPHAS, _relu(np.einsum("nhwk,nk->nhw", a, _relu(alphas)))),
        (HINT_MAX, _relu(np.einsum("nhwk,nk->nhw", a, g.max(axis=(1, 2))))),
        (HINT_SUM, ref * (h * w)),
        (HINT_ACTIVATIONS, _relu(np.einsum("nhwk,nk->nhw", a, a.mean(axis=(1, 2))))),
        (HINT_WEIGHTED_GRADIENTS, _relu(np.einsum("nhwk,nk->nhw", g, alphas))),
        (HINT_NO_POOLING, _relu((a * g).sum(axis=3))),
    ]
    if n > 1:
        out.insert(1, (HINT_BATCH, _relu(np.einsum("nhwk,k->nhw", a, g.mean(axis=(0, 1, 2))))))
    top = ref.reshape(n, -1).max(axis=1).reshape(n, 1, 1)
    if (top > 0).all():
        out.append((HINT_NORMALISED, ref / top))  # each image's map by its own maximum
        out.append((HINT_NORMALISED, ref / ref.max()))  # the batch by its maximum
    return out


def _check_one(fn, activations, gradients, where: str = "") -> np.ndarray:
    a_in, g_in = activations.copy(), gradients.copy()
    answer = as_array(call_student(fn, a_in, g_in, what=WHAT), WHAT)
    if not (np.array_equal(a_in, activations) and np.array_equal(g_in, gradients)):
        raise Hint(HINT_INPLACE)
    ref = reference(activations, gradients)
    if close(answer, ref):
        return answer
    for hint, wrong in mutants(activations, gradients):
        if close(answer, wrong):
            raise Hint(hint)
    match(answer, ref, {}, f"{WHAT}{where}", shape_hint=HINT_SHAPE)  # the generic shape / difference hint
    return answer


def _cases():
    """Hand-made cases: post-ReLU activations (>= 0, some zeros), signed gradients, h, w, K all different.

    The gradients get a per-channel offset so that the alphas are clearly signed (some channels raise
    the score, some lower it) and the weighted sum has both signs: the ReLU then matters.
    """
    rng = np.random.default_rng(5)
    out = []
    for n, h, w, k in ((2, 3, 4, 5), (1, 5, 2, 3)):
        a = np.maximum(rng.normal(0.3, 1.0, size=(n, h, w, k)), 0.0)
        offsets = np.stack([rng.permutation(np.linspace(-1.0, 1.0, k)) for _ in range(n)])  # both signs, every image
        g = rng.normal(0.0, 0.5, size=(n, h, w, k)) + offsets[:, None, None, :]
        out.append((a, g))
    return out


def _activations_and_gradients(backbone, images, layer=None):
    """A and dy^c/dA (N, h, w, K) at ``layer`` for each image's predicted class, via labkit.gradcam's split."""
    from .. import gradcam as lkgc
    from ..attribution import resolve_targets

    split = lkgc.GradCAM(backbone, layer)
    acts, scores = split.forward(backbone.tensor(images))  # NCHW leaf A, and the logits computed from it
    grads = split.backward(acts, scores, resolve_targets(None, scores.detach()))
    return tuple(t.detach().permute(0, 2, 3, 1).double().cpu().numpy() for t in (acts, grads))


def gradcam(gradcam_from, backbone=None, images=None) -> bool:
    """Stage 05: ``gradcam_from(activations (N, h, w, K), gradients (N, h, w, K)) -> (N, h, w)``.

    ``backbone`` (a :class:`labkit.models.Backbone`) and ``images`` (RGB at its size) are optional: with
    them the function also runs on the real activations and gradients of the backbone's last conv layer
    (for each image's predicted class) and must give labkit.gradcam's maps.
    """
    from ..models import Backbone

    if backbone is not None and not isinstance(backbone, Backbone):
        raise TypeError(f"checks.gradcam takes a labkit Backbone (models.load), got {type(backbone).__name__}")
    if (backbone is None) != (images is None):
        raise TypeError("checks.gradcam needs both backbone and images, or neither")

    def run() -> str:
        for a, g in _cases():
            _check_one(gradcam_from, a, g)
        if backbone is None:
            return "alphas from the mean gradients, ReLU of the weighted sum, on small test cases"
        a, g = _activations_and_gradients(backbone, backbone.check_images(np.asarray(images)))
        layer = backbone.last_conv_layer
        _check_one(gradcam_from, a, g, where=f" on {backbone.name}'s {layer}")
        n, h, w, k = a.shape
        return (f"alphas from the mean gradients, ReLU of the weighted sum; on {backbone.name}'s {layer} "
                f"({n} image(s), {h}x{w}, K={k}) it gives labkit.gradcam's maps")

    return report(STAGE, run)
