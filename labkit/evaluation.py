"""Evaluating explanations: can we trust the map? (stage 08)

Every metric works for every method of the lab, and for three *baselines* that know nothing of the model,
with the methods' call shape ``method(model, images, target=None, **options) -> Explanation``:

* :func:`random_map` (uniform noise, seeded), :func:`centre_map` (peaks at the image centre) and
  :func:`edge_map` (scikit-image's Sobel filter on the grey image). A metric that ranks them with the
  methods is measuring something other than the model.
* :func:`method_functions` wraps the six methods (occlusion, saliency, CAM, Grad-CAM, guided backprop,
  guided Grad-CAM) so that ``maps`` always means *importance*, higher = more important: occlusion's map is
  the *drop* of the target's probability when a square hides the pixel. Guided backprop runs on a torch
  twin converted from the Keras model **at every call**, so a randomised backbone is never explained
  with a twin holding its old weights.

The metrics:

* **Model-parameter randomisation** (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, *Sanity Checks
  for Saliency Maps*, NeurIPS 2018): re-initialise the weights layer by layer from the top
  (:func:`cascading_randomisation`) or one layer at a time (:func:`independent_randomisation`) and compare
  the maps with the original ones by Spearman rank correlation (of the absolute and of the signed map),
  SSIM and the correlation of HOG features (:data:`SIMILARITIES`). A map that does not change when the
  model is destroyed does not explain the model. The backbone's weights are restored afterwards, bit for
  bit (:func:`restored`).
* **Data randomisation** (same paper): :func:`data_randomisation` compares the maps of a model trained
  on permuted labels with those of the real model.
* **Deletion and insertion** (Petsiuk, Das & Saenko, *RISE: Randomized Input Sampling for Explanation of
  Black-box Models*, BMVC 2018): :func:`deletion` removes pixels in the map's order (most important
  first) and records the target's probability after each step; a good map makes it fall fast (small
  area under the curve). :func:`insertion` starts from an image with every pixel removed and puts them
  back in the same order (large area is good). "Removed" means replaced by a baseline image: uniform
  grey (``backbone.grey``) or a blurred copy of the image (:func:`baseline_images`).
* **Pointing game** (Zhang et al., 2016; :mod:`labkit.pointing`): does the map's maximum fall on the object?

:func:`evaluate_methods` computes the whole table (methods and baselines x metrics); ``labkit evaluate
minivgg --methods all --n N`` prints it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .attribution import Explanation, class_scores, images_per_pass, prepare, resolve_targets, to_numpy
from .models import Backbone

METHODS = ("occlusion", "saliency", "cam", "gradcam", "guided_backprop", "guided_gradcam")
BASELINES = ("random", "centre", "edges")


# ----------------------------------------------------------------------------------------------------
# Baselines: maps that know nothing of the model


def _pixels(model, images) -> np.ndarray:
    """RGB pixels (N, H, W, 3) of a batch (a Backbone takes pixels; preprocessed tensors are deprocessed)."""
    if isinstance(images, torch.Tensor):
        if isinstance(model, Backbone):
            return model.deprocess(images if images.ndim == 4 else images[None])
        images = to_numpy(images)
    images = np.asarray(images)
    return images[None] if images.ndim == 3 else images


def _targets(model, images, target) -> np.ndarray:
    """The classes a baseline 'explains': None is the model's prediction, as for the methods."""
    n = len(_pixels(model, images))
    if target is None:
        with torch.no_grad():
            return to_numpy(class_scores(model, prepare(model, images)).argmax(1)).astype(np.int64)
    t = np.asarray(target, np.int64).reshape(-1)
    return np.broadcast_to(t, (n,)).copy() if t.size == 1 else t


def random_map(model, images, target=None, seed: int = 0) -> Explanation:
    """Uniform noise, the same for the same seed and image size: a map with no information at all."""
    pix = _pixels(model, images)
    rng = np.random.default_rng(seed)
    maps = rng.random((len(pix),) + pix.shape[1:3]).astype(np.float32)
    return Explanation("random", maps, _targets(model, images, target))


def centre_map(model, images, target=None) -> Explanation:
    """Highest at the image centre, falling with the distance from it: the photographer's prior."""
    pix = _pixels(model, images)
    h, w = pix.shape[1:3]
    yy, xx = np.mgrid[0:h, 0:w]
    m = -np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2).astype(np.float32)
    return Explanation("centre", np.broadcast_to(m, (len(pix), h, w)).copy(), _targets(model, images, target))


def edge_map(model, images, target=None) -> Explanation:
    """scikit-image's Sobel edge magnitude of the grey image: where the image has edges, whatever the model."""
    from skimage.color import rgb2gray
    from skimage.filters import sobel

    pix = _pixels(model, images)
    maps = np.stack([sobel(rgb2gray(p.astype(np.float32) / 255.0)) for p in pix]).astype(np.float32)
    return Explanation("edges", maps, _targets(model, images, target))


# ----------------------------------------------------------------------------------------------------
# The methods, with maps that mean importance


def occlusion_drop(model, images, target=None, size=None, stride=None, progress: bool = False) -> Explanation:
    """Occlusion as importance: the target's probability minus its mean probability with the pixel hidden.

    ``size`` and ``stride`` default to a quarter and an eighth of the image (24 and 12 on minivgg: 7 x 7
    positions), coarser than stage 02's default, to keep the evaluation's many calls affordable.
    """
    from . import occlusion

    x = prepare(model, images)
    h = x.shape[1]
    size = size or max(1, h // 4)
    stride = stride or max(1, size // 2)
    e = occlusion.occlusion(model, x, target, size=size, stride=stride, progress=progress, preprocessed=True)
    with torch.no_grad():
        p = to_numpy(class_scores(model, x, "probability"))[np.arange(len(x)), e.targets]
    return Explanation("occlusion", (p[:, None, None] - e.maps).astype(np.float32), e.targets, e.raw)


def method_functions(backbone: Backbone, methods=METHODS, cam_head=None, progress: bool = False) -> dict[str, Callable]:
    """{name: fn(model, images, target=None) -> Explanation} for the lab's methods, maps = importance.

    ``cam_head``: the CAM head to use (default: one trained on fresh shapes for minivgg, as ``labkit
    explain`` does; CAM on another backbone needs one). The guided methods convert the Keras model to a
    torch twin at every call: after a randomisation, the twin holds the new weights.
    """
    from . import cam, gradcam, guided_backprop, keras_to_torch, saliency

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    if "cam" in methods and cam_head is None:
        from . import data

        if tuple(backbone.class_names) != tuple(data.CLASSES):
            raise ValueError(f"CAM on {backbone.name} needs a head trained on labelled images: pass cam_head="
                             "labkit.cam.train_cam_head(backbone, images, labels, class_names)")
        shapes = data.make_shapes(600, seed=7)  # as `labkit explain` does for minivgg
        cam_head = cam.train_cam_head(backbone, shapes.images, shapes.labels, data.CLASSES, progress=progress)

    def guided(model, images, target=None):
        twin = keras_to_torch.to_torch(model.model)  # fresh: the weights the model has now
        return guided_backprop.guided_backprop(twin, model.tensor(images) if not isinstance(images, torch.Tensor)
                                               else images, target, preprocessed=True)

    def guided_gc(model, images, target=None):
        return guided_backprop.guided_gradcam(model, images, target, twin=keras_to_torch.to_torch(model.model))

    def cam_fn(model, images, target=None):
        if model is not cam_head.backbone:
            raise ValueError("this CAM head was trained on another backbone: build the methods for this one")
        return cam.cam(cam_head, images, target)

    table = {
        "occlusion": occlusion_drop,
        "saliency": lambda model, images, target=None: saliency.saliency(model, images, target),
        "cam": cam_fn,
        "gradcam": lambda model, images, target=None: gradcam.gradcam(model, images, target),
        "guided_backprop": guided,
        "guided_gradcam": guided_gc,
    }
    out = {m: table[m] for m in methods}
    if cam_head is not None and "cam" in out:
        out["cam"].head = cam_head  # randomisation re-initialises it with the classifier (it replaces it)
    return out


def baseline_functions(baselines=BASELINES) -> dict[str, Callable]:
    table = {"random": random_map, "centre": centre_map, "edges": edge_map}
    unknown = [b for b in baselines if b not in table]
    if unknown:
        raise ValueError(f"unknown baseline {unknown[0]!r}: choose from {', '.join(table)}")
    return {b: table[b] for b in baselines}


def signed_maps(explanation: Explanation) -> np.ndarray:
    """The map with its sign: the gradient image summed over RGB for the gradient methods, else ``maps``."""
    raw = explanation.raw
    if raw is not None and raw.ndim == 4:
        return raw.sum(axis=-1)
    return explanation.maps


# ----------------------------------------------------------------------------------------------------
# Similarity of two batches of maps (one number per image)


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def spearman(a, b, absolute: bool = True) -> np.ndarray:
    """Spearman rank correlation per image of two map batches (N, H, W); of |map| when ``absolute``.

    A constant map has no ranks: its correlation is nan (and left out of means by ``np.nanmean``).
    """
    from scipy.stats import rankdata

    a, b = _pair(a, b)
    if absolute:
        a, b = np.abs(a), np.abs(b)
    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), np.nan)


def ssim(a, b) -> np.ndarray:
    """Structural similarity per image (scikit-image), each map first scaled to [0, 1]."""
    from skimage.metrics import structural_similarity

    a, b = _pair(a, b)
    return np.array([structural_similarity(_unit(x), _unit(y), data_range=1.0) for x, y in zip(a, b)])


def hog_similarity(a, b, pixels_per_cell: int = 8) -> np.ndarray:
    """Pearson correlation of the maps' HOG features (scikit-image), per image, as in Adebayo et al."""
    from skimage.feature import hog

    a, b = _pair(a, b)
    out = []
    for x, y in zip(a, b):
        fx = hog(_unit(x), pixels_per_cell=(pixels_per_cell,) * 2, cells_per_block=(2, 2))
        fy = hog(_unit(y), pixels_per_cell=(pixels_per_cell,) * 2, cells_per_block=(2, 2))
        ok = fx.std() > 0 and fy.std() > 0
        out.append(float(np.corrcoef(fx, fy)[0, 1]) if ok else np.nan)
    return np.array(out)


def _pair(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim == 2:
        a, b = a[None], b[None]
    if a.shape != b.shape:
        raise ValueError(f"the two map batches differ in shape: {a.shape} and {b.shape}")
    return a, b


SIMILARITIES = {
    "spearman_abs": lambda e0, e1: spearman(signed_maps(e0), signed_maps(e1), absolute=True),
    "spearman": lambda e0, e1: spearman(signed_maps(e0), signed_maps(e1), absolute=False),
    "ssim": lambda e0, e1: ssim(e0.maps, e1.maps),
    "hog": lambda e0, e1: hog_similarity(e0.maps, e1.maps),
}


def similarities(original: Explanation, other: Explanation) -> dict[str, float]:
    """Mean over the images of each similarity in :data:`SIMILARITIES` (nan images left out)."""
    out = {}
    for name, fn in SIMILARITIES.items():
        values = fn(original, other)
        out[name] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return out


# ----------------------------------------------------------------------------------------------------
# Model-parameter randomisation


def weighted_layers(backbone: Backbone) -> list[str]:
    """Names of the layers that have weights, from the output down (the cascade's order)."""
    return [layer.name for layer in reversed(backbone.model.layers) if layer.weights]


def _heads(backbone: Backbone, heads) -> list:
    return [h.model if hasattr(h, "model") and not isinstance(h, Backbone) else h for h in heads]


@contextmanager
def restored(backbone: Backbone, heads=()):
    """Inside: change the backbone's weights (and the heads') at will; on exit, even after an error, every
    weight is put back exactly as it was."""
    models = [backbone.model] + _heads(backbone, heads)
    saved = [(layer, [w.copy() for w in layer.get_weights()]) for m in models for layer in m.layers if layer.weights]
    try:
        yield backbone
    finally:
        for layer, weights in saved:
            layer.set_weights(weights)


def _random_weights(layer, rng: np.random.Generator) -> list[np.ndarray]:
    """He-normal kernels (truncated at 2 standard deviations, as Keras' initialisers do) and zero biases."""
    out = []
    for w in layer.get_weights():
        if w.ndim > 1:
            fan_in = int(np.prod(w.shape[:-1]))
            z = rng.standard_normal(w.shape)
            while (bad := np.abs(z) > 2).any():
                z[bad] = rng.standard_normal(int(bad.sum()))
            out.append((z * np.sqrt(2.0 / fan_in) / 0.87962566).astype(w.dtype))  # 0.8796: std of N(0,1) cut at 2
        else:
            out.append(np.zeros_like(w))
    return out


def randomise(backbone: Backbone, layer: str, seed: int = 0, heads=()) -> None:
    """Re-initialise one layer's weights, the same random weights for the same (seed, layer).

    Randomising the output layer also re-initialises the Dense layer of each of ``heads`` (a CAM head
    replaces the classifier, so it goes with it). Use it inside :func:`restored`.
    """
    model = backbone.model
    target = backbone.layer(layer)
    if not target.weights:
        raise ValueError(f"layer {layer!r} has no weights to randomise: choose one of {', '.join(weighted_layers(backbone))}")
    index = [l.name for l in model.layers].index(layer)
    target.set_weights(_random_weights(target, np.random.default_rng([seed, index])))
    if layer == weighted_layers(backbone)[0]:
        for h, head in enumerate(_heads(backbone, heads)):
            for layer_h in head.layers:
                if layer_h.weights:
                    layer_h.set_weights(_random_weights(layer_h, np.random.default_rng([seed, 10_000 + h])))


def _heads_of(methods: dict) -> list:
    return [fn.head for fn in methods.values() if hasattr(fn, "head")]


@dataclass
class Randomisation:
    """Maps of each method before and after randomisation, and their similarities.

    ``stages``: the layers, in the order they were randomised. ``explanations[method][stage]`` (stage
    "original" too). ``scores[method][stage]``: {similarity name: mean over the images}.
    """

    mode: str
    stages: list[str]
    explanations: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)

    def table(self, similarity: str = "spearman_abs") -> str:
        width = max(len(m) for m in self.scores) + 2
        head = f"{similarity} vs original, {self.mode}: " + "  ".join(self.stages)
        rows = [head]
        for method, by_stage in self.scores.items():
            rows.append(f"{method:<{width}}" + " ".join(f"{by_stage[s][similarity]:7.3f}" for s in self.stages))
        return "\n".join(rows)


def _explain_all(methods: dict, backbone, images, target) -> dict[str, Explanation]:
    return {name: fn(backbone, images, target) for name, fn in methods.items()}


def cascading_randomisation(backbone: Backbone, images, methods: dict, layers=None, target=None, seed: int = 0,
                            keep_maps: bool = True, progress: bool = True, explain_at=None) -> Randomisation:
    """Adebayo et al.'s cascading test: randomise ``layers`` one after the other from the top, keeping the
    earlier ones random, and compare each method's maps after each step with its original maps.

    ``layers`` default to every layer with weights, from the output down; ``target`` defaults to the
    ORIGINAL model's predicted classes (the same class is explained before and after). ``methods``:
    {name: fn(model, images, target)}, e.g. :func:`method_functions` and :func:`baseline_functions`.
    ``explain_at``: the layers after whose randomisation the maps are computed (default: each of ``layers``);
    the cascade still randomises every layer of ``layers`` on the way.
    """
    return _randomisation("cascading", backbone, images, methods, layers, target, seed, keep_maps, progress,
                          explain_at)


def independent_randomisation(backbone: Backbone, images, methods: dict, layers=None, target=None, seed: int = 0,
                              keep_maps: bool = True, progress: bool = True) -> Randomisation:
    """Adebayo et al.'s independent test: randomise one layer at a time, the others as trained."""
    return _randomisation("independent", backbone, images, methods, layers, target, seed, keep_maps, progress, None)


def _randomisation(mode, backbone, images, methods, layers, target, seed, keep_maps, progress, explain_at) -> Randomisation:
    layers = list(weighted_layers(backbone) if layers is None else layers)
    if not layers:
        raise ValueError("give at least one layer to randomise")
    names = weighted_layers(backbone)
    bad = [l for l in layers if l not in names]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a layer with weights of {backbone.name}: choose from {', '.join(names)}")
    if mode == "cascading" and layers != sorted(layers, key=names.index):
        raise ValueError("a cascade randomises from the top down: list the layers from the output towards the input")
    explain_at = layers if explain_at is None else list(explain_at)
    if any(l not in layers for l in explain_at):
        raise ValueError(f"explain_at must name layers of the cascade: {', '.join(layers)}")
    heads = _heads_of(methods)
    with restored(backbone, heads):
        if target is None:
            x = prepare(backbone, images)
            with torch.no_grad():
                target = to_numpy(class_scores(backbone, x).argmax(1)).astype(np.int64)
        original = _explain_all(methods, backbone, images, target)
        result = Randomisation(mode, explain_at)
        result.explanations = {m: {"original": e} for m, e in original.items()} if keep_maps else {}
        result.scores = {m: {} for m in methods}
        for layer in tqdm(layers, desc=f"{mode} randomisation", disable=not progress, leave=False):
            # independent: each layer alone, the others put back; cascading: the earlier layers stay random
            with restored(backbone, heads) if mode == "independent" else nullcontext():
                randomise(backbone, layer, seed, heads)
                if layer not in explain_at:
                    continue
                now = _explain_all(methods, backbone, images, target)
            for m, e in now.items():
                result.scores[m][layer] = similarities(original[m], e)
                if keep_maps:
                    result.explanations[m][layer] = e
    return result


def data_randomisation(model: Backbone, random_model: Backbone, images, methods_for: Callable, target=None) -> dict:
    """Adebayo et al.'s data randomisation test: the maps of a model trained on permuted labels against the
    real model's, for the same images and classes (default: the real model's predictions).

    ``methods_for(model) -> {name: fn}`` builds the methods for each model (each needs its own CAM head
    and twin), e.g. ``lambda m: method_functions(m)``. Returns {method: {similarity: mean}}.
    """
    x = prepare(model, images)
    if target is None:
        with torch.no_grad():
            target = to_numpy(class_scores(model, x).argmax(1)).astype(np.int64)
    real = _explain_all(methods_for(model), model, images, target)
    permuted = _explain_all(methods_for(random_model), random_model, images, target)
    return {m: similarities(real[m], permuted[m]) for m in real}


# ----------------------------------------------------------------------------------------------------
# Deletion and insertion (Petsiuk et al., RISE)

FILLS = ("grey", "blur")


def baseline_images(model, x: torch.Tensor, fill: str = "grey", sigma: float | None = None) -> torch.Tensor:
    """What a removed pixel becomes, for a preprocessed batch ``x`` (N, H, W, C).

    * ``"grey"``: every pixel ``backbone.grey`` (medium grey; 0 for a torch model). Removing a pixel adds
      a sharp grey hole, an edge the network never saw in training: the score may fall because of the
      holes rather than because the evidence is gone.
    * ``"blur"``: the image under a Gaussian blur (scikit-image; ``sigma`` default 5 px at 224 px, RISE's
      choice, scaled to the image). It keeps the colours and the coarse layout, removes the detail.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    if fill == "grey":
        grey = model.grey if isinstance(model, Backbone) else 0.0
        return torch.full_like(x, float(grey))
    from skimage.filters import gaussian

    sigma = sigma if sigma is not None else max(1.0, 5.0 * x.shape[1] / 224)
    blurred = [gaussian(im, sigma=sigma, channel_axis=-1, preserve_range=True) for im in to_numpy(x)]
    return torch.as_tensor(np.stack(blurred), dtype=x.dtype, device=x.device)


def step_counts(n_pixels: int, steps: int) -> np.ndarray:
    """Pixels removed (or inserted) before each of the ``steps + 1`` forward passes: 0, ..., n_pixels."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return np.linspace(0, n_pixels, steps + 1).round().astype(np.int64)


@dataclass
class Curves:
    """Deletion or insertion curves: ``scores`` (N, steps + 1) the target's probability after removing
    (inserting) the fraction ``fractions`` of the pixels; ``auc`` (N,) the area under each curve."""

    mode: str
    fill: str
    fractions: np.ndarray
    scores: np.ndarray
    targets: np.ndarray

    @property
    def auc(self) -> np.ndarray:
        return area_under_curve(self.scores, self.fractions)

    @property
    def mean_auc(self) -> float:
        return float(self.auc.mean())


def area_under_curve(scores, fractions=None) -> np.ndarray:
    """Trapezoid rule over x in [0, 1] (the fraction of pixels), per curve: ``scores`` (..., steps + 1)."""
    scores = np.asarray(scores, np.float64)
    x = np.linspace(0.0, 1.0, scores.shape[-1]) if fractions is None else np.asarray(fractions, np.float64)
    return np.trapezoid(scores, x, axis=-1)


def deletion(model, images, maps, target=None, steps: int = 16, fill: str = "grey", per_pass: int | None = None,
             progress: bool = False) -> Curves:
    """Petsiuk et al.'s deletion metric: remove pixels in the order of ``maps`` (largest first), in
    ``steps`` equal steps, and record the target's probability. A small area under the curve is good.

    ``maps`` (N, H, W): an importance map per image, or an :class:`Explanation` (its ``maps``), or a
    method ``fn(model, images, target)`` to call. ``target`` None: each image's predicted class.
    All ``N * (steps + 1)`` images go through the model in batched passes (``per_pass`` images each).
    """
    return _curves("deletion", model, images, maps, target, steps, fill, per_pass, progress)


def insertion(model, images, maps, target=None, steps: int = 16, fill: str = "blur", per_pass: int | None = None,
              progress: bool = False) -> Curves:
    """Petsiuk et al.'s insertion metric: start from the baseline image (default: blurred, as in RISE) and
    put the pixels back in the order of ``maps``. A large area under the curve is good."""
    return _curves("insertion", model, images, maps, target, steps, fill, per_pass, progress)


def _as_maps(model, images, maps, target) -> np.ndarray:
    if callable(maps):
        maps = maps(model, images, target)
    if isinstance(maps, Explanation):
        maps = maps.maps
    return np.asarray(maps, np.float32)


def _curves(mode, model, images, maps, target, steps, fill, per_pass, progress) -> Curves:
    x = prepare(model, images)
    n, h, w, _ = x.shape
    with torch.no_grad():
        targets = resolve_targets(target, class_scores(model, x))
    maps = _as_maps(model, images, maps, to_numpy(targets).astype(np.int64))
    if maps.shape != (n, h, w):
        raise ValueError(f"maps must be (N, H, W) = {(n, h, w)} like the images, got {maps.shape}")
    counts = torch.as_tensor(step_counts(h * w, steps), device=x.device)
    # rank[i, p]: the place of pixel p in image i's order (0 = the most important); stable for ties
    order = np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(h * w)[None].repeat(n, 0), axis=1)
    rank = torch.as_tensor(rank, device=x.device).reshape(n, h, w)
    base = baseline_images(model, x, fill)
    start, end = (x, base) if mode == "deletion" else (base, x)  # what the image is before / after its step
    total = n * (steps + 1)
    per_pass = per_pass or images_per_pass(h, w, x.device)
    out = torch.empty(total, device=x.device)
    with torch.no_grad():
        for s in tqdm(range(0, total, per_pass), desc=mode, disable=not progress, leave=False):
            idx = torch.arange(s, min(s + per_pass, total), device=x.device)
            i, k = idx // (steps + 1), idx % (steps + 1)
            changed = (rank[i] < counts[k][:, None, None])[..., None]  # the first counts[k] pixels of the order
            batch = torch.where(changed, end[i], start[i])
            out[idx] = class_scores(model, batch, "probability").gather(1, targets[i][:, None])[:, 0]
    return Curves(mode, fill, counts.cpu().numpy() / (h * w), to_numpy(out).reshape(n, steps + 1),
                  to_numpy(targets).astype(np.int64))


# ----------------------------------------------------------------------------------------------------
# The table: methods and baselines x metrics

METRICS = {
    "pointing": "pointing game (higher: peak on the object)",
    "deletion": "deletion AUC, grey (lower is better)",
    "insertion": "insertion AUC, blur (higher is better)",
    "rand_fc1": "|Spearman| after cascading randomisation down to fc1 (lower: the map depends on the weights)",
    "rand_conv": "|Spearman| after cascading randomisation down to the last conv layer (lower is better)",
    "data_rand": "|Spearman| with the permuted-labels model's maps (lower is better)",
}


@dataclass
class Table:
    """rows: {method or baseline: {metric: value}}; seconds: {metric: time it took}; n: images."""

    rows: dict
    seconds: dict
    n: int
    notes: list = field(default_factory=list)

    def format(self) -> str:
        metrics = [m for m in METRICS if any(m in r for r in self.rows.values())]
        width = max(len(r) for r in self.rows) + 2
        lines = [f"{'':<{width}}" + "".join(f"{m:>11}" for m in metrics)]
        for i, (name, row) in enumerate(self.rows.items()):
            if name in BASELINES and (i == 0 or list(self.rows)[i - 1] not in BASELINES):
                lines.append("baselines:")
            lines.append(f"{name:<{width}}" + "".join(f"{row.get(m, float('nan')):>11.3f}" for m in metrics))
        lines.append("")
        lines += [f"{m}: {METRICS[m]}" for m in metrics]
        lines += self.notes
        return "\n".join(lines)


def evaluate_methods(backbone: Backbone, images, labels=None, masks=None, methods=METHODS, baselines=BASELINES,
                     random_model: Backbone | None = None, steps: int = 16, cam_head=None,
                     rand_layers: tuple[str, str] | None = None, seed: int = 0, progress: bool = True) -> Table:
    """Every metric for every method and baseline on ``images``; the class explained is ``labels`` (the
    true class) when given, else the prediction. ``masks`` (N, H, W) enable the pointing game;
    ``random_model`` (trained on permuted labels) the data randomisation test."""
    fns = dict(method_functions(backbone, methods, cam_head, progress=False))
    fns.update(baseline_functions(baselines))
    x = prepare(backbone, images)
    with torch.no_grad():
        target = resolve_targets(labels, class_scores(backbone, x))
    target = to_numpy(target).astype(np.int64)
    rows = {name: {} for name in fns}
    seconds = {}

    def timed(metric, fn):
        t0 = time.perf_counter()
        fn()
        seconds[metric] = seconds.get(metric, 0.0) + time.perf_counter() - t0

    maps = {}
    timed("maps", lambda: maps.update({name: fn(backbone, images, target) for name, fn in
                                       tqdm(fns.items(), desc="maps", disable=not progress, leave=False)}))
    if masks is not None:
        from . import pointing

        timed("pointing", lambda: [rows[n].__setitem__("pointing", pointing.pointing_accuracy(e.maps, masks))
                                   for n, e in maps.items()])
    for metric, fn, fill in (("deletion", deletion, "grey"), ("insertion", insertion, "blur")):
        timed(metric, lambda: [rows[n].__setitem__(metric, fn(backbone, images, e.maps, target, steps, fill).mean_auc)
                               for n, e in tqdm(maps.items(), desc=metric, disable=not progress, leave=False)])
    top = weighted_layers(backbone)
    fc_layer, conv_layer = rand_layers or (_first_dense_from_top(backbone), backbone.last_conv_layer)
    cascade = top[: top.index(conv_layer) + 1]

    def randomisation():
        heads = _heads_of(fns)
        with restored(backbone, heads):
            for layer in tqdm(cascade, desc="cascading randomisation", disable=not progress, leave=False):
                randomise(backbone, layer, seed, heads)
                if layer in (fc_layer, conv_layer):
                    key = "rand_fc1" if layer == fc_layer else "rand_conv"
                    for n, fn in fns.items():
                        e = fn(backbone, images, target)
                        rows[n][key] = float(np.nanmean(spearman(signed_maps(maps[n]), signed_maps(e))))

    timed("randomisation", randomisation)
    notes = [f"randomised down to {fc_layer} (rand_fc1) and {conv_layer} (rand_conv), top down"]
    if random_model is not None:
        def data_rand():
            other = dict(method_functions(random_model, methods, None, progress=False))
            other.update(baseline_functions(baselines))
            for n, fn in other.items():
                rows[n]["data_rand"] = float(np.nanmean(spearman(signed_maps(maps[n]),
                                                                 signed_maps(fn(random_model, images, target)))))
        timed("data_randomisation", data_rand)
    return Table(rows, seconds, len(x), notes)


def _first_dense_from_top(backbone: Backbone) -> str:
    """The lowest Dense layer (fc1 in VGG): randomising down to it destroys the whole classifier."""
    dense = [l.name for l in backbone.model.layers if l.weights and len(l.weights[0].shape) == 2]
    if not dense:
        raise ValueError(f"{backbone.name} has no Dense layer to randomise down to")
    return dense[0]
