"""What every explanation method shares: its inputs, its targets, its result, its upsampling.

One call shape for every method::

    explanation = method(model, images, target=None, **options)

``model`` is a :class:`labkit.models.Backbone` (its Keras model, on the torch backend) or a torch
``nn.Module`` taking the same preprocessed NHWC batch (the torch twin from ``labkit.keras_to_torch``).
``images`` are RGB pixels in [0, 255], (H, W, 3) or (N, H, W, 3); a preprocessed torch tensor is
accepted as-is when ``preprocessed=True``. ``target`` is None (each image's predicted class), one class
index for the whole batch, or one per image. The result is an :class:`Explanation` whose ``maps`` are
(N, H, W) at the input resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from skimage.transform import resize

from .models import Backbone, as_batch_array, check_values


@dataclass
class Explanation:
    """Maps (N, H, W) at input resolution, the raw low-resolution maps when the method has them, and the targets."""

    method: str
    maps: np.ndarray
    targets: np.ndarray
    raw: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.maps)


def prepare(model, images, preprocessed: bool = False) -> torch.Tensor:
    """The batch as a preprocessed float32 NHWC tensor on the model's device; an empty batch is an error."""
    x = _prepare(model, images, preprocessed)
    if len(x) == 0:  # every method would return empty maps without a word
        raise ValueError("there are no images to explain: pass at least one image")
    return x


def _prepare(model, images, preprocessed: bool) -> torch.Tensor:
    if isinstance(model, Backbone):
        if preprocessed:
            x = model.check_images(images, pixels=False)
            return torch.as_tensor(x, dtype=torch.float32).to(model.device)
        return model.tensor(images)
    raw = as_batch_array(images)
    if raw.dtype == torch.uint8 or raw.dtype == np.uint8:
        # uint8 is RGB pixels: a torch model takes the preprocessed batch, and would silently explain raw pixels.
        raise ValueError("a torch model takes the preprocessed float batch, not uint8 pixels: pass backbone.tensor(images)")
    if raw.ndim == 3:
        raw = raw[None]
    if raw.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C) or (H, W, C), got shape {tuple(raw.shape)}")
    check_values(raw, pixels=False)
    x = torch.as_tensor(raw, dtype=torch.float32)
    for parameter in model.parameters():  # the first one's device; none: where the images are
        return x.to(parameter.device)
    return x


SCORES = ("logit", "probability")


def _keras_logits(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    """Pre-softmax class scores of a Keras model whose last Dense layer has a softmax activation."""
    import keras

    head = backbone.model.layers[-1]
    cached = getattr(backbone, "_penultimate", None)
    if cached is None or cached[0] is not backbone.model:
        penultimate = keras.Model(backbone.model.inputs, head.input, name=f"{backbone.name}_penultimate")
        cached = (backbone.model, penultimate)
        backbone._penultimate = cached  # built once per backbone: making a keras.Model costs milliseconds
    h = cached[1](x)
    return keras.ops.matmul(h, head.kernel) + head.bias


def class_scores(model, x: torch.Tensor, score: str = "logit") -> torch.Tensor:
    """(N, C) class scores of a preprocessed batch: the logit (before softmax) or the probability."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if isinstance(model, Backbone):
        if score == "probability":
            return model.model(x)
        return _keras_logits(model, x)
    if score == "logit" and hasattr(model, "logits"):
        return model.logits(x)
    if score == "logit" and isinstance(model, torch.nn.Sequential) and isinstance(model[-1], torch.nn.Softmax):
        return model[:-1](x)
    out = model(x)
    return torch.softmax(out, dim=1) if score == "probability" and not _is_softmax_output(model) else out


def _is_softmax_output(model) -> bool:
    return isinstance(model, torch.nn.Sequential) and isinstance(model[-1], torch.nn.Softmax) or bool(
        getattr(model, "outputs_probabilities", False)
    )


def target_tensor(target) -> torch.Tensor | None:
    """``target`` checked and flattened to a 1-D int64 tensor (None stays None): the one place targets are read.

    A class index is an integer: a Python or numpy int, or an integer array / list / tensor holding one per image.
    Floats (2.7 would silently become class 2), booleans (True would become class 1) and class names are refused
    with a one-line ValueError.
    """
    if target is None:
        return None
    shown = repr(target) if len(repr(target)) <= 40 else f"{type(target).__name__} {repr(target)[:37]}..."
    if isinstance(target, str):
        raise ValueError(f"target must be a class index, got the name {target!r}: "
                         f"give its index, e.g. backbone.class_names.index({target!r})")
    if isinstance(target, torch.Tensor):
        ok = not target.is_floating_point() and not target.is_complex() and target.dtype != torch.bool
        t = target
    else:
        try:
            arr = np.asarray(target)
        except (ValueError, TypeError):
            arr = np.asarray(None)
        ok = arr.dtype.kind in "iu"
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64)) if ok else None
    if not ok:
        raise ValueError(f"target must be a class index (an int) or one per image, got {shown}: "
                         "use int(...) for one class, or an integer array")
    return t.reshape(-1).long()


def resolve_targets(target, scores: torch.Tensor) -> torch.Tensor:
    """Target class per image: the argmax of ``scores`` (N, C) when target is None; checked against C."""
    n, c = scores.shape
    if target is None:
        return scores.argmax(dim=1)
    t = target_tensor(target).to(scores.device)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"got {t.numel()} targets for {n} images: give one class index, or one per image")
    out_of_range = (t < 0) | (t >= c)
    if out_of_range.any():
        raise ValueError(f"class index {int(t[out_of_range][0])} is out of range: the model has {c} classes (0..{c - 1})")
    return t.clone()  # never the caller's own tensor


# Images per forward pass when a method splits a batch (occluded copies per pass, for occlusion): about
# 150k pixels on a CPU. On 2 cores the cost per image levels off from about 16 images of 96 x 96 (minivgg:
# 1.0 ms/image at 16; 0.6-0.8, varying from run to run, at 32; 1.2 at 256), while VGG16 at 224 x 224 costs
# 128-132 ms/image from 1 to 8 images but 162 ms/image at 16, once its activations no longer fit in the
# caches; its saliency maps of 16 images take 4.0 s in passes of 2 or 4 and 4.5-6 s in one (measured on
# 2 CPU cores). Passes also bound the memory a backward pass holds. A GPU wants big batches.
PIXELS_PER_PASS = {"cpu": 16 * 96 * 96, "cuda": 64 * 224 * 224}


def images_per_pass(height: int, width: int, device="cpu") -> int:
    """Images of height x width per forward pass: 16 of minivgg's 96 x 96 or 2 of 224 x 224 on a CPU, 64 VGG16
    images on a GPU (see ``PIXELS_PER_PASS``)."""
    budget = PIXELS_PER_PASS.get(torch.device(device).type, PIXELS_PER_PASS["cpu"])
    return max(1, budget // (int(height) * int(width)))


def passes(n: int, size: int, target=None) -> list[tuple[slice, object]]:
    """``[(images, their target)]``: slices of ``size`` images covering ``n``, each with its part of ``target``.

    ``target`` is None (each pass resolves its own predictions), one class index (kept as it is) or one per
    image (sliced); any other count is the one-line error of :func:`resolve_targets`.
    """
    if n == 0:
        raise ValueError("there are no images to explain: pass at least one image")
    t = target_tensor(target)
    if t is not None:
        if t.numel() not in (1, n):
            raise ValueError(f"got {t.numel()} targets for {n} images: give one class index, or one per image")
    return [(slice(s, min(s + size, n)), t if t is None or t.numel() == 1 else t[s : s + size]) for s in range(0, n, size)]


def upsample(maps, size: tuple[int, int], order: int = 1) -> np.ndarray:
    """Low-resolution maps (N, h, w) to (N, H, W) float32 numpy, bilinear by default.

    numpy maps go through scikit-image (``resize(order=order, mode="edge")``, the course's call). A torch
    tensor with ``order=1`` is resized where it lives by ``torch.nn.functional.interpolate`` (bilinear,
    half-pixel centres, clamped at the edges): the same sampling as scikit-image, equal to it within
    float rounding (``tests/test_attribution.py`` checks 1e-6), without a per-map Python loop — 16 maps
    of 6 x 6 cost about 0.1 ms this way and 3.4 ms through skimage (measured on 2 CPU cores), which
    was a third of a Grad-CAM call on minivgg.
    """
    size = tuple(int(s) for s in size)
    if isinstance(maps, torch.Tensor):
        if order == 1:
            m = maps.detach().float()
            if tuple(m.shape[1:]) == size:
                return m.cpu().numpy().copy()  # the caller's own maps: a copy
            up = torch.nn.functional.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)
            return up[:, 0].cpu().numpy()  # a new tensor: its numpy view is the result
        maps = to_numpy(maps)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape[1:] == size:
        return maps.copy()
    return np.stack([resize(m, size, order=order, mode="edge", anti_aliasing=False) for m in maps]).astype(np.float32)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()
