"""Check for stage 02: ``occlusion_map(backbone, image, target, size, stride)``, the plain loop.

The student's function slides a grey square (``backbone.grey``: 0 *after* preprocessing) over one RGB
image and returns the target class's probability at each position, an ``(n_y, n_x)`` map with the square's
top-left corner at ``0, stride, 2*stride, ...``. The reference is the raw map of
:func:`labkit.occlusion.occlusion`. In every case here ``(H - size)`` is a multiple of ``stride``, so the
notebook's grid (corners up to the first that reaches the edge) and "every corner where the square fits"
are the same grid, and both pass. So does the course's formulation, the square **centred** on the pixels
``0, stride, ...`` (clipped at the border; the sizes here are odd, so the centre is unambiguous): it is
compared with ``occlusion(..., centred=True)``.

The check runs on a tiny Keras backbone with fixed random weights (32x32 inputs, 4 classes, the same
preprocessing as minivgg), so that it is instant and does not depend on which backbone the notebook uses.
Each listed mistake is recomputed on it, and an answer equal to one of them gets that mistake's hint.
"""

from __future__ import annotations

import functools

import numpy as np

from .base import Hint, as_array, call_student, close, one_thread, report

STAGE = "02 occlusion"
SIZE = 32  # the tiny backbone's input side
# (square size, stride, rank of the target among the classes: 1 = runner-up). Odd sizes, (SIZE - size) a
# multiple of stride: see the module docstring.
CASES = ((7, 5, 1), (11, 7, 3))


@functools.lru_cache(maxsize=4)
def tiny_backbone(size: int = SIZE, classes: int = 4, seed: int = 0):
    """A small conv net as a frozen Backbone: conv-pool-conv-pool-dense-softmax, fixed random weights.

    He-scaled kernels, so its class probabilities are far from 0 and 1 and move when a square hides part of
    the image. Preprocessing is minivgg's (x / 127.5 - 1), so pixel 127.5 is grey = 0.
    """
    import keras
    from keras import layers

    from ..models import Backbone, freeze

    rng = np.random.default_rng(seed)
    inputs = keras.Input((size, size, 3), name="input_layer")
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = layers.MaxPooling2D(2, name="pool1")(h)
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(h)
    h = layers.MaxPooling2D(2, name="pool2")(h)
    h = layers.Flatten(name="flatten")(h)
    outputs = layers.Dense(classes, activation="softmax", name="predictions")(h)
    model = keras.Model(inputs, outputs, name="tiny")
    for layer in model.layers:
        if layer.weights:
            kernel, bias = tuple(layer.kernel.shape), tuple(layer.bias.shape)
            fan_in = int(np.prod(kernel[:-1]))
            layer.set_weights([(rng.normal(size=kernel) * (2 / fan_in) ** 0.5).astype("float32"),
                               (rng.normal(size=bias) * 0.1).astype("float32")])
    return Backbone(
        name="tiny",
        model=freeze(model),
        class_names=tuple(f"class{c}" for c in range(classes)),
        input_size=(size, size),
        last_conv_layer="conv2",
        grey=0.0,
        _preprocess=lambda x: x / 127.5 - 1.0,
        _deprocess=lambda x: (x + 1.0) * 127.5,
    )


def check_image(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """An RGB uint8 image with structure at the squares' scale: smooth colour blobs plus noise."""
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(4, 4, 3))
    smooth = resize(coarse, (size, size, 3), order=1, mode="edge", preserve_range=True)
    return np.clip(smooth + rng.normal(0, 20, size=smooth.shape), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# The reference and the mistakes, all on the tiny backbone


def _starts(length: int, size: int, stride: int, extra: int = 0) -> list[int]:
    """0, stride, ... while a square of ``size`` fits, plus ``extra`` positions (negative: fewer)."""
    n = (length - size) // stride + 1 + extra
    return [a * stride for a in range(n)]


def _loop(backbone, image, target, size, stride, fill=0.0, score="probability", pick="target",
          rows=None, cols=None, cumulative=False, clip=True) -> np.ndarray:
    """One occluded copy per position, all in one batch: the map a given (possibly wrong) recipe gives."""
    import torch

    from ..attribution import class_scores

    h, w = backbone.input_size
    rows = _starts(h, size, stride) if rows is None else rows
    cols = _starts(w, size, stride) if cols is None else cols
    x = backbone.tensor(image)
    copies = []
    current = x.clone()
    for a in rows:
        for b in cols:
            occluded = current if cumulative else x.clone()
            # clip=False: a student's x[a:a+size] with a negative a, which Python reads from the end
            y0, x0 = (max(a, 0), max(b, 0)) if clip else (a, b)
            occluded[:, y0 : a + size, x0 : b + size, :] = fill
            copies.append(occluded.clone())
    with torch.no_grad():
        scores = class_scores(backbone, torch.cat(copies), score).float()
    if pick == "top":
        values = scores.max(dim=1).values
    else:
        values = scores[:, target]
    return values.reshape(len(rows), len(cols)).cpu().numpy()


def reference_map(backbone, image, target: int, size: int, stride: int, centred: bool = False) -> np.ndarray:
    """The raw map of :func:`labkit.occlusion.occlusion`: the target's probability per square position."""
    from .. import occlusion

    return occlusion.occlusion(backbone, image, target=target, size=size, stride=stride, centred=centred,
                               progress=False).raw[0]


def _centred_mutants(bb, image, target, size, stride) -> dict:
    """Mistakes of a student who follows the course: squares centred on 0, stride, ..."""
    from ..occlusion import starts

    h, w = bb.input_size
    rows, cols = starts(h, size, stride, centred=True), starts(w, size, stride, centred=True)
    return {
        "near the top and left borders your centred square hides nothing: there y - size // 2 is negative, and a "
        "slice with a negative start counts from the end (x[-3:4] is empty). Start the slice at max(0, y - size // 2)":
            _loop(bb, image, target, size, stride, rows=rows, cols=cols, clip=False),
    }


def _pixel(bb, value: float) -> float:
    """What an RGB pixel of ``value`` (all three channels) becomes after the backbone's preprocessing."""
    return float(bb.preprocess(np.full((1,) + tuple(bb.input_size) + (3,), value, np.float32))[0, 0, 0, 0])


def _mutants(bb, image, target, size, stride, ref) -> dict:
    import torch

    with torch.no_grad():
        p0 = float(bb.model(bb.tensor(image))[0, target])
    h, w = bb.input_size
    return {
        "your square is black, not grey: pixel value 0 is black. Grey is backbone.grey (0) AFTER preprocessing: "
        "fill the preprocessed input with backbone.grey (or the RGB image with 127.5 before preprocessing)":
            _loop(bb, image, target, size, stride, fill=_pixel(bb, 0)),
        "your square is filled with 127.5 after preprocessing, far outside the input range: grey is 127.5 in pixel "
        "values, which preprocessing maps to backbone.grey (0); fill the preprocessed input with backbone.grey":
            _loop(bb, image, target, size, stride, fill=127.5),
        "your grey is 127, not 127.5: a uint8 image cannot hold 127.5 (assigning it truncates). Fill the "
        "preprocessed input with backbone.grey instead, or occlude a float copy of the image":
            _loop(bb, image, target, size, stride, fill=_pixel(bb, 127)),
        "your grey is 128: 127.5 rounded (a uint8 image cannot hold 127.5), close to grey but not backbone.grey "
        "after preprocessing. Fill the preprocessed input with backbone.grey, or a float copy of the image with 127.5":
            _loop(bb, image, target, size, stride, fill=_pixel(bb, 128)),
        "these are logits, not probabilities: the model's output (backbone.model(x) or backbone.predict) is "
        "already the softmax probability":
            _loop(bb, image, target, size, stride, score="logit"),
        "this is the drop in probability (unoccluded minus occluded); the map asked for is the occluded "
        "probability itself": p0 - ref,
        "you took each occluded image's own top class: the map follows ONE fixed class, the `target` argument, "
        "at every position": _loop(bb, image, target, size, stride, pick="top"),
        "your map is transposed: rows (first axis) go with the square's vertical position y, columns with x": ref.T,
        "the last row and column of positions are missing: the last square is the one that reaches the image's "
        "edge, here with its top-left corner at H - size, so the positions are 0, stride, ..., up to and including H - size":
            _loop(bb, image, target, size, stride, rows=_starts(h, size, stride, -1), cols=_starts(w, size, stride, -1)),
        "your map has one row and one column too many: stop at the first square that reaches the image's edge "
        "(top-left corner >= H - size), not when the corner itself reaches the edge":
            _loop(bb, image, target, size, stride, rows=_starts(h, size, stride, 1), cols=_starts(w, size, stride, 1)),
        "the squares pile up: each position should grey out ONE square of the original image; start every "
        "position from a fresh copy (x.clone() / image.copy()), not from the previous occluded one":
            _loop(bb, image, target, size, stride, cumulative=True),
    }


def occlusion(occlusion_map) -> bool:
    """Stage 02: ``occlusion_map(backbone, image, target, size, stride)`` -> (n_y, n_x) probabilities.

    Runs it on a tiny backbone for two (size, stride) pairs and a target that is not the predicted class;
    prints one PASS or HINT line and returns True or False.
    """

    def run() -> str:
        bb = tiny_backbone()
        image = check_image()
        probs = bb.predict(image)[0]
        h, w = bb.input_size
        for size, stride, rank in CASES:
            target = int(np.argsort(-probs)[rank])
            given = image.copy()
            answer = call_student(occlusion_map, bb, given, target, size, stride, what="occlusion_map")
            if not np.array_equal(given, image):
                raise Hint("occlusion_map changed the image it was given: grey out a copy (image.copy(), or the "
                           "preprocessed tensor), never the caller's image")
            answer = as_array(answer, "occlusion_map")
            ref = reference_map(bb, image, target, size, stride)
            ny, nx = ref.shape
            if answer.ndim == 3 and answer.shape[0] == 1:
                raise Hint(f"occlusion_map returned shape {answer.shape}: return the map of the one image, (n_y, n_x)")
            if answer.ndim == 3 and answer.shape[:2] == ref.shape and answer.shape[2] == bb.num_classes:
                raise Hint("you returned every class's probability at each position: keep only the target class's")
            if close(answer, ref, rtol=1e-4):
                continue
            centred = reference_map(bb, image, target, size, stride, centred=True)
            if close(answer, centred, rtol=1e-4):
                continue  # the course's squares, centred on the pixels 0, stride, ...
            mutants = {**_mutants(bb, image, target, size, stride, ref),
                       **_centred_mutants(bb, image, target, size, stride)}
            for hint, wrong in mutants.items():
                if close(answer, wrong, rtol=1e-4):
                    raise Hint(hint)
            if answer.shape != ref.shape and answer.shape != centred.shape:
                cy, cx = centred.shape
                raise Hint(f"for a {h}x{w} image, size {size} and stride {stride} the map should be {ny}x{nx} "
                           f"(top-left corners 0, {stride}, ..., {(ny - 1) * stride}), or {cy}x{cx} with the "
                           f"course's centred squares (centres 0, {stride}, ..., {(cy - 1) * stride}), "
                           f"got shape {answer.shape}")
            raise Hint(f"your map differs from the reference (largest difference {np.abs(answer - ref).max():.3g}) "
                       f"for size {size}, stride {stride}: grey out image[y:y+size, x:x+size] for every corner "
                       f"(y, x) and record the target's probability at map[row, column]")
        return "occlusion_map gives the target's probability with a grey square at each position, on the right grid"

    with one_thread():
        return report(STAGE, run)
