"""Stage 09: debugging a model with its explanations.

``minivgg_spurious`` was trained on shapes where a small tag (``labkit.data.add_cue``) sits on most images of
one class and rarely on the others. Its accuracy on images with that correlation looks excellent; the maps
show where its evidence comes from, and interventions (remove the tag, put it on other shapes) confirm it.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from . import data as lkdata

CUE_MODES = ("train", "none", "all")  # the tag as in training, removed from every image, on every image


def spurious_accuracy(backbone, n: int = 1000, seed: int = 1, cue_class: str = lkdata.CUE_CLASS, p_class: float = 0.95,
                      p_other: float = 0.02, progress: bool = True) -> dict[str, float]:
    """Top-1 accuracy on ``n`` fresh shapes with the tag as in training ("train"), removed ("none") and on
    every image ("all"): the same images each time, only the tag differs.
    """
    accs = {}
    for mode in tqdm(CUE_MODES, desc="cue settings", disable=not progress, leave=False):
        shapes = lkdata.make_cued_shapes(n, seed=seed, size=backbone.input_size[0], cue=mode, cue_class=cue_class,
                                         p_class=p_class, p_other=p_other)
        probs = backbone.predict(shapes.images, batch_size=128)
        accs[mode] = float((probs.argmax(1) == shapes.labels).mean())
    return accs
