"""Stage 09: debugging a model with its explanations.

``minivgg_spurious`` was trained on shapes where a small tag (``labkit.data.add_cue``) sits on most images of
one class (``labkit.data.CUE_CLASS``) and rarely on the others. Its accuracy on images with that correlation
looks excellent. The maps show where its evidence comes from; interventions confirm it: the same images with
the tag removed (accuracy drops) and with the tag put on shapes of other classes (predictions flip).
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from . import data as lkdata
from . import gradcam, guided_backprop, occlusion, pointing, saliency
from .keras_to_torch import to_torch

CUE_MODES = ("train", "none", "all")  # the tag as in training, removed from every image, on every image
METHODS = ("gradcam", "saliency", "guided_backprop", "occlusion")


def spurious_accuracy(backbone, n: int = 1000, seed: int = 1, cue_class: str = lkdata.CUE_CLASS,
                      p_class: float = lkdata.CUE_P_CLASS, p_other: float = lkdata.CUE_P_OTHER,
                      progress: bool = True) -> dict[str, float]:
    """Top-1 accuracy on ``n`` fresh shapes with the tag as in training ("train"), removed ("none") and on
    every image ("all"): the same images each time, only the tag differs. For ``labkit evaluate``.
    """
    accs = {}
    for mode in tqdm(CUE_MODES, desc="cue settings", disable=not progress, leave=False):
        shapes = lkdata.make_cued_shapes(n, seed=seed, size=backbone.input_size[0], cue=mode, cue_class=cue_class,
                                         p_class=p_class, p_other=p_other)
        probs = backbone.predict(shapes.images, batch_size=128)
        accs[mode] = float((probs.argmax(1) == shapes.labels).mean())
    return accs


def class_accuracy(backbone, images, labels, batch_size: int = 64) -> dict[str, float]:
    """Top-1 accuracy per class name (classes absent from ``labels`` are left out)."""
    preds = backbone.predict(images, batch_size=batch_size).argmax(1)
    labels = np.asarray(labels)
    return {name: float((preds[labels == c] == c).mean()) for c, name in enumerate(backbone.class_names)
            if (labels == c).any()}


def flip_rate(backbone, images, labels, corners, cue_class: str = lkdata.CUE_CLASS) -> float:
    """Among the images whose true class is not ``cue_class``: the share the model assigns to ``cue_class``
    once the tag is painted in the given corners (the reference for the stage's exercise)."""
    labels = np.asarray(labels)
    others = labels != lkdata.CLASSES.index(cue_class)
    tagged = lkdata.add_cue(np.asarray(images)[others], np.asarray(corners)[others])
    preds = backbone.predict(tagged).argmax(1)
    return float((preds == lkdata.CLASSES.index(cue_class)).mean())


def explain(backbone, images, target=None, methods=METHODS, occlusion_args=None, progress: bool = True) -> dict[str, np.ndarray]:
    """Maps (N, H, W) of the lab's methods for the same images and targets (None: the predicted class).

    ``occlusion_args``: keyword arguments for ``occlusion.occlusion`` (e.g. ``dict(size=12, stride=12)``).
    """
    out = {}
    for name in tqdm(methods, desc="methods", disable=not progress, leave=False):
        if name == "gradcam":
            e = gradcam.gradcam(backbone, images, target)
        elif name == "saliency":
            e = saliency.saliency(backbone, images, target)
        elif name == "guided_backprop":
            e = guided_backprop.guided_backprop(to_torch(backbone.model), backbone.tensor(images), target, preprocessed=True)
        elif name == "occlusion":
            e = occlusion.occlusion(backbone, images, target, progress=False, **(occlusion_args or {}))
        else:
            raise ValueError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
        out[name] = np.asarray(e.maps)
        target = e.targets if target is None else target  # every method explains the same class
    return out


def tag_share(maps, corners, grow: int = 2) -> np.ndarray:
    """Per map: the share of its positive mass inside the tag's box (grown by ``grow`` px). A map that
    ignores the tag puts about the box's share of the image there; one that shows it puts much more."""
    maps = np.maximum(np.asarray(maps, dtype=np.float64), 0)
    size = maps.shape[1]
    boxes = np.stack([lkdata.cue_mask(int(c), size) for c in np.asarray(corners)])
    boxes = pointing._grown(boxes, grow)
    total = maps.sum(axis=(1, 2))
    return np.where(total > 0, (maps * boxes).sum(axis=(1, 2)) / np.maximum(total, 1e-30), 0.0)


def points_at_tag(maps, corners, tolerance: int = 3) -> np.ndarray:
    """Per map: True where its maximum falls on the tag (within ``tolerance`` px): the pointing game, with
    the tag as the 'object'."""
    size = np.asarray(maps).shape[1]
    boxes = np.stack([lkdata.cue_mask(int(c), size) for c in np.asarray(corners)])
    return pointing.hits(maps, boxes, tolerance)
