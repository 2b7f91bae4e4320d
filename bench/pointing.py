"""The pointing game on minivgg: does each method's map peak on the object? Printed next to the centre baseline.

    .venv/bin/python bench/pointing.py [--n 300] [--tolerance 3]

Scored on correctly classified fresh test shapes (seed 1), for the predicted class. The centre baseline is a
"map" that always points at the image centre.
"""

from __future__ import annotations

import argparse
import sys
import warnings

warnings.filterwarnings("ignore")

import labkit  # noqa: E402,F401
import numpy as np  # noqa: E402

from labkit import data, pointing  # noqa: E402
from labkit.explain import cam_head_for  # noqa: E402


def method_maps(backbone, images, progress=False):
    from labkit import cam, gradcam, guided_backprop, keras_to_torch, occlusion, saliency

    twin = keras_to_torch.to_torch(backbone.model)
    head = cam_head_for(backbone, None, progress=progress)
    batches = range(0, len(images), 32)

    def batched(fn):
        return np.concatenate([fn(images[s : s + 32]).maps for s in batches])

    return {
        "gradcam": batched(lambda b: gradcam.gradcam(backbone, b)),
        "cam": batched(lambda b: cam.cam(head, b)),
        "occlusion (inverted)": -batched(lambda b: occlusion.occlusion(backbone, b, size=16, stride=8, progress=False)),
        "saliency": batched(lambda b: saliency.saliency(backbone, b)),
        "guided_backprop": batched(lambda b: guided_backprop.guided_backprop(twin, backbone.tensor(b), preprocessed=True)),
        "guided_gradcam": batched(lambda b: guided_backprop.guided_gradcam(backbone, b, twin=twin)),
    }


def pointing_table(backbone, n=300, tolerance=3, seed=1):
    """{method: pointing accuracy}, plus the centre baseline, on the correctly classified of n test shapes."""
    test = data.make_shapes(n, seed=seed)
    correct = backbone.predict(test.images).argmax(1) == test.labels
    images, masks = test.images[correct], test.masks[correct]
    scores = {name: pointing.pointing_accuracy(m, masks, tolerance) for name, m in method_maps(backbone, images).items()}
    scores["centre baseline"] = pointing.centre_baseline(masks, tolerance)
    return scores, int(correct.sum())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--tolerance", type=int, default=3)
    a = p.parse_args(argv)
    from labkit import models

    scores, used = pointing_table(models.load("minivgg"), a.n, a.tolerance)
    print(f"pointing game on {used} correctly classified test shapes (tolerance {a.tolerance} px)")
    for name, s in scores.items():
        print(f"  {name:<22} {s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
