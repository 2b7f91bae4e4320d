"""Check for stage 03: ``saliency_map(backbone, images, target)``, gradient saliency with torch autograd.

The student's function returns, per image, ``max over RGB of |d score_target / d x|`` with ``x`` the
preprocessed input (``backbone.tensor(images)``): an ``(N, H, W)`` array. The score may be the logit (what
:func:`labkit.saliency.saliency` uses by default, the paper's class score) or the probability; both pass.

The check runs on the tiny Keras backbone of the occlusion check (32x32 inputs, 4 classes, fixed random
weights), with targets that are not the predicted classes, so that "the gradient of the predicted class"
and "the gradient of the target" differ. Each listed mistake is recomputed there for both scores.
"""

from __future__ import annotations

import numpy as np

from .base import Hint, as_array, call_student, close, report
from .base import one_thread
from .occlusion import check_image, tiny_backbone

STAGE = "03 saliency"
SCORES = ("logit", "probability")


def check_images() -> np.ndarray:
    return np.stack([check_image(seed) for seed in (1, 2)])


def check_targets(backbone, images) -> np.ndarray:
    """Each image's runner-up class: never its predicted class."""
    return np.argsort(-backbone.predict(images), axis=1)[:, 1].astype(np.int64)


def _gradient(backbone, images, target, score: str) -> np.ndarray:
    from .. import saliency

    grad, _ = saliency.input_gradient(backbone, images, target, score=score)
    return grad.detach().cpu().numpy().astype(np.float64)


def _summed_gradient(backbone, images, score: str, columns=None) -> np.ndarray:
    """The gradient of the sum of ALL classes' scores (a mistake: the class is never picked), or of
    ``scores[:, columns]`` (the mistake of indexing every image with every image's target)."""
    import torch

    from ..attribution import class_scores

    x = backbone.tensor(images).detach().requires_grad_(True)
    with torch.enable_grad():
        scores = class_scores(backbone, x, score)
        if columns is not None:
            scores = scores[:, torch.as_tensor(np.asarray(columns), device=scores.device)]
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad.detach().cpu().numpy().astype(np.float64)


def reference_maps(backbone, images, target) -> dict:
    """Score -> the reference maps (N, H, W) of :func:`labkit.saliency.saliency` with that score."""
    from .. import saliency

    return {s: saliency.saliency(backbone, images, target, score=s).maps.astype(np.float64) for s in SCORES}


def _mutants(backbone, images, target, score: str) -> dict:
    g = _gradient(backbone, images, target, score)
    a = np.abs(g)
    out = {
        "no absolute value: a strongly negative gradient matters as much as a positive one; take |gradient| "
        "of each colour channel, then the max over RGB": g.max(-1),
        "the absolute value comes too late: take |gradient| of each colour channel first, then the max over RGB":
            np.abs(g.max(-1)),
        "you summed the colour channels: the paper takes the MAX over RGB of |gradient|": a.sum(-1),
        "you summed the signed colour channels: take |gradient| of each channel, then the MAX over RGB":
            np.abs(g.sum(-1)),
        "you averaged the colour channels: the paper takes the MAX over RGB of |gradient|": a.mean(-1),
    }
    predicted = backbone.predict(images).argmax(1)
    out["this is the saliency of each image's PREDICTED class: back-propagate the score of the `target` class "
        "(scores[n, target[n]])"] = np.abs(_gradient(backbone, images, predicted, score)).max(-1)
    for c in range(backbone.num_classes):
        if np.any(c == np.asarray(target)):
            continue
        out[f"this is the saliency of class {c}, not of each image's target: back-propagate "
            "scores[n, target[n]] for each image n"] = np.abs(_gradient(backbone, images, c, score)).max(-1)
    out["scores[:, target] picks, for EVERY image, the targets of all the images (an N x N block): pick "
        "one score per image, scores[torch.arange(N), target]"] = np.abs(
        _summed_gradient(backbone, images, score, columns=target)).max(-1)
    if score == "logit":  # the probabilities' sum is 1 whatever x is: that mistake gives the zero map (below)
        out["you back-propagated the sum of every class's score: pick each image's target score first "
            "(scores[n, target[n]])"] = np.abs(_summed_gradient(backbone, images, score)).max(-1)
    out["your map is the reference divided by 127.5: that is the gradient w.r.t. the raw pixels. Take it "
        "w.r.t. what the network sees, x = backbone.tensor(images)"] = np.abs(g).max(-1) / 127.5
    return out


def saliency(saliency_map) -> bool:
    """Stage 03: ``saliency_map(backbone, images, target)`` -> (N, H, W) saliency maps.

    Runs it on two images of a tiny backbone with each image's runner-up class as target; prints one PASS or
    HINT line and returns True or False.
    """

    def run() -> str:
        bb = tiny_backbone()
        images = check_images()
        target = check_targets(bb, images)
        given_images, given_target = images.copy(), target.copy()
        answer = call_student(saliency_map, bb, given_images, given_target, what="saliency_map")
        answer = as_array(answer, "saliency_map")
        refs = reference_maps(bb, images, target)
        n, h, w = refs["logit"].shape
        if answer.shape == (n, h, w, 3):
            raise Hint("you returned the (N, H, W, 3) gradient: reduce it to one value per pixel, the max over "
                       "RGB of its absolute value (axis -1)")
        if answer.shape == (h, w) or answer.shape == (h, w, 3):
            raise Hint(f"saliency_map returned shape {answer.shape} for {n} images: return one map per image, (N, H, W)")
        for score, ref in refs.items():
            if close(answer, ref, rtol=1e-3):
                other = "" if score == "logit" else " (the reference uses the logit, the paper's class score: the " \
                    "probability's gradient also depends on the other classes and fades once the model is sure)"
                return f"saliency_map gives max over RGB of |d {score} / d x| for each image's target{other}"
        if answer.shape == (n, h, w) and np.abs(answer).max() <= 1e-4 * refs["probability"].max():
            raise Hint("your map is (almost) zero everywhere. The probabilities of all classes always sum to 1, so "
                       "if you back-propagated their sum its gradient is 0: pick scores[n, target[n]]. Otherwise make "
                       "sure x = backbone.tensor(images).requires_grad_(True) is what goes into the model")
        for score in SCORES:
            for hint, wrong in _mutants(bb, images, target, score).items():
                if close(answer, wrong, rtol=1e-3):
                    raise Hint(hint)
        if answer.shape != (n, h, w):
            raise Hint(f"saliency_map returned shape {answer.shape}, expected (N, H, W) = {(n, h, w)}")
        diff = min(np.abs(answer - ref).max() for ref in refs.values())
        raise Hint(f"your maps differ from the reference (largest difference {diff:.3g}): the gradient of "
                   "scores[n, target[n]] w.r.t. x, absolute value, max over RGB")

    with one_thread():
        return report(STAGE, run)
