"""Occlusion (Zeiler & Fergus, 2014): slide a grey square over the image and watch the class probability.

``raw[n, a, b]`` is the probability of image n's target class with the square at position ``(a, b)`` filled
with grey — low values mark the parts the class needs. Two ways to place the squares, one function:

* **the corner grid** (the default, ``centred=False``): the square's top-left corner is at
  ``(a * stride, b * stride)``. Along an axis of length H there are ``ceil((H - size) / stride) + 1``
  positions, starting at 0; when ``(H - size)`` is not a multiple of ``stride`` the last square hangs over
  the edge and is clipped, so every pixel is covered by at least one square (``stride <= size`` is
  required). This is captum's grid.
* **the centred squares** of the course (``centred=True``): the square is *centred* on the pixel
  ``(a * stride, b * stride)``, rows ``a * stride - size // 2`` to ``a * stride - size // 2 + size - 1``
  (exactly centred for an odd size, such as the course's 101 on VGG16's 224 pixels), clipped at the
  image's border. Along an axis of length H there are ``ceil(H / stride)`` positions: the centres
  0, stride, 2 * stride, ... up to H - 1. With ``stride=1`` it is the course's "a square centred on each
  pixel".

``maps[n, y, x]`` spreads ``raw`` over the pixels. On the corner grid it is the **mean of the occluded
probabilities of the squares covering pixel (y, x)**. This is exactly how captum's ``Occlusion`` spreads
its attributions, so with the same grid and fill 0 (``sliding_window_shapes=(size, size, 3)``,
``strides=(stride, stride, 3)``, ``baselines=0``)::

    captum_attribution[n, y, x, :] == p_unoccluded[n] - maps[n, y, x]

(captum attributes ``p_unoccluded - p_occluded``, averaged over the windows covering the pixel). With
centred squares it is the course's map: pixel (y, x) gets the probability with the square centred on the
nearest centre (on (y, x) itself when ``stride=1``).

Cost: one forward per position, plus one for the unoccluded image when ``target`` is None (it gives the
predicted class), run ``per_pass`` copies at a time under ``torch.no_grad``. The copies of
all the images are streamed through the same passes, so the result depends neither on ``per_pass`` nor
on how many images are explained together.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .attribution import Explanation, class_scores, images_per_pass, prepare, resolve_targets, to_numpy
from .models import Backbone


def _pair(value, name: str) -> tuple[int, int]:
    v = (value, value) if np.isscalar(value) else tuple(value)
    if len(v) != 2 or not all(isinstance(i, (int, np.integer)) and i >= 1 for i in v):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return int(v[0]), int(v[1])


def starts(length: int, size: int, stride: int, centred: bool = False) -> list[int]:
    """Where each square begins along an axis of ``length`` pixels (negative: clipped at the border).

    Corner grid: 0, stride, ... for ``ceil((length - size) / stride) + 1`` squares. Centred: the squares
    centred on 0, stride, ... for ``ceil(length / stride)`` squares, each beginning ``size // 2`` before
    its centre.
    """
    if centred:
        return [a * stride - size // 2 for a in range(math.ceil(length / stride))]
    return [a * stride for a in range(math.ceil((length - size) / stride) + 1)]


def grid(length: int, size: int, stride: int, centred: bool = False) -> torch.Tensor:
    """(n, length) bool: row a is True on the pixels covered by the a-th square along this axis."""
    first = torch.tensor(starts(length, size, stride, centred))[:, None]
    pixels = torch.arange(length)[None, :]
    return (pixels >= first) & (pixels < first + size)


def nearest_centre(length: int, stride: int) -> torch.Tensor:
    """(n, length) float: row a is 1 on the pixels whose nearest centre (0, stride, ...) is the a-th one."""
    n = math.ceil(length / stride)
    index = torch.clamp((torch.arange(length) + stride // 2) // stride, max=n - 1)
    return torch.nn.functional.one_hot(index, n).T.float()


def course_size(side: int) -> int:
    """The course's square, 101 pixels on VGG16's 224-pixel images, as the same fraction of ``side``, odd
    (so that it has a centre pixel): 101 for 224, 43 for minivgg's 96."""
    size = round(101 * side / 224)
    return size if size % 2 else size + 1


def occlusion(
    model,
    images,
    target=None,
    size=None,
    stride=None,
    fill=None,
    per_pass: int | None = None,
    progress: bool = True,
    preprocessed: bool = False,
    centred: bool = False,
) -> Explanation:
    """Zeiler & Fergus occlusion maps (see the module docstring for the grid and the upsampling).

    ``size``: the square's side in pixels, an int or (height, width); default an eighth of the image
    (12 for minivgg's 96, 28 for vgg16's 224). ``stride``: default ``size // 2``; at most ``size``.
    ``fill``: the value of the square *after preprocessing*, a number or one per channel; default
    ``backbone.grey`` (0: medium grey for both backbones; 0 for a torch model).
    ``per_pass``: occluded copies per forward pass (memory against speed; the maps do not change);
    default :func:`labkit.attribution.images_per_pass` (16 at 96 x 96, 2 at 224 x 224 on a CPU).
    ``centred``: False places the squares on the corner grid, True centres them on the pixels
    0, stride, 2 * stride, ... as in the course (see the module docstring).
    ``raw`` (N, n_y, n_x) holds the target's probability per square position; ``maps`` (N, H, W) the mean
    over the squares covering each pixel (corner grid) or the value at the nearest centre (centred).
    """
    x = prepare(model, images, preprocessed)
    n, h, w, c = x.shape
    sy, sx = _pair(size if size is not None else max(1, min(h, w) // 8), "size")
    ty, tx = _pair(stride if stride is not None else (max(1, sy // 2), max(1, sx // 2)), "stride")
    if sy > h or sx > w:
        raise ValueError(f"size {(sy, sx)} is larger than the image ({h}, {w}): choose a smaller square")
    if not centred and (ty > sy or tx > sx):
        raise ValueError(f"stride {(ty, tx)} must be at most size {(sy, sx)} so that every pixel is covered")
    if per_pass is not None and (not isinstance(per_pass, (int, np.integer)) or per_pass < 1):
        raise ValueError(f"per_pass must be a positive int, got {per_pass!r}")
    if fill is None:
        fill = model.grey if isinstance(model, Backbone) else 0.0
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    if fill_t.ndim > 1 or fill_t.numel() not in (1, c):
        raise ValueError(f"fill must be a number or {c} numbers (one per channel), got shape {tuple(fill_t.shape)}")
    if not torch.isfinite(fill_t).all():
        raise ValueError(f"fill must be finite (a preprocessed value, e.g. backbone.grey), got {fill!r}")
    fill_t = fill_t.reshape(-1)

    top, left = starts(h, sy, ty, centred), starts(w, sx, tx, centred)
    ny, nx = len(top), len(left)
    positions = ny * nx
    if per_pass is None:
        per_pass = images_per_pass(h, w, x.device)
    # The work list: when target is None, the N unoccluded images first (their predictions are the
    # targets); then every (image, square): item i >= lead is image (i - lead) // positions with square
    # (i - lead) % positions. A given target needs no unoccluded pass.
    lead = n if target is None else 0
    total = lead + n * positions
    targets = p_orig = None
    raw = torch.empty(n, positions, dtype=torch.float32, device=x.device)
    with torch.no_grad():
        for s in tqdm(range(0, total, per_pass), desc="occlusion", disable=not progress, leave=False):
            items = range(s, min(s + per_pass, total))
            image = [i if i < lead else (i - lead) // positions for i in items]
            batch = x[torch.tensor(image, device=x.device)]  # a copy of each item's image
            occluded, squares = [], []
            for j, i in enumerate(items):
                if i >= lead:
                    a, b = divmod((i - lead) % positions, nx)
                    # One rectangle per copy, written in place (slicing clips it at the border): a quarter
                    # of the time of a torch.where over the whole batch.
                    y0, x0 = top[a], left[b]
                    batch[j, max(y0, 0) : y0 + sy, max(x0, 0) : x0 + sx] = fill_t
                    occluded.append(j)
                    squares.append(a * nx + b)
            probs = class_scores(model, batch, "probability").float()
            if targets is None and not lead:  # a given target, checked against the classes after one pass
                targets = resolve_targets(target, probs.new_empty(n, probs.shape[1]))
            elif targets is None:  # the unoccluded probabilities, until every image has been seen
                if p_orig is None:
                    p_orig = torch.empty(n, probs.shape[1], dtype=torch.float32, device=x.device)
                seen = [j for j, i in enumerate(items) if i < lead]
                p_orig[[image[j] for j in seen]] = probs[seen]
                if s + per_pass >= n:
                    targets = resolve_targets(None, p_orig)
            if occluded:
                img = torch.tensor([image[j] for j in occluded], device=x.device)
                raw[img, torch.tensor(squares, device=x.device)] = probs[occluded].gather(1, targets[img][:, None])[:, 0]

    raw = raw.reshape(n, ny, nx)
    # Mean over the covering squares (corner grid) or the nearest centre's value (centred), separably:
    # sum_ab raw[a, b] r[a, y] k[b, x] / (sum_a r[a, y] sum_b k[b, x]).
    if centred:
        r, k = nearest_centre(h, ty).to(x.device), nearest_centre(w, tx).to(x.device)
    else:
        r, k = grid(h, sy, ty).to(x.device).float(), grid(w, sx, tx).to(x.device).float()
    sums = torch.einsum("nab,ay,bx->nyx", raw, r, k)
    counts = r.sum(0)[:, None] * k.sum(0)[None, :]
    maps = sums / counts
    return Explanation("occlusion", to_numpy(maps), to_numpy(targets).astype(np.int64), to_numpy(raw))


def slider_values(side: int) -> dict[str, range]:
    """The square sizes and strides stage 02's widget offers for ``side``-pixel images: every size from a
    sixteenth to half of the image (so the course's :func:`course_size` is one of them), strides from a
    sixteenth of the image (at most 16 x 16 positions, to keep each redraw short) to half of it."""
    return {"size": range(max(2, side // 16), side // 2 + 1), "stride": range(max(1, side // 16), side // 2 + 1)}


def grey_pixel(backbone: Backbone) -> np.ndarray:
    """The RGB pixel (floats, before preprocessing) that preprocessing maps to ``backbone.grey``:
    127.5 in every channel for minivgg, ImageNet's mean colour for vgg16."""
    x = np.full((1, 1, 1, 3), backbone.grey, np.float32)
    return np.asarray(backbone._deprocess(x), dtype=np.float64)[0, 0, 0]
