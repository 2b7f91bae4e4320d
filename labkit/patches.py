"""Maximally activating patches: which bits of which images make one channel of one layer fire hardest.

Three steps, one function each::

    field = receptive_field(backbone, "block3_conv3")           # the input box each unit of that layer sees
    hits = top_activations(backbone, images, "block3_conv3", channel=12, k=9)   # the k strongest units
    crops = patches(images, hits, field)                        # (k, size, size, 3), ready for patch_grid

The receptive field is computed analytically from the layers' kernels, strides and paddings (the
classic recurrence), not by back-propagation, so it is exact and instant; ``tests/test_patches.py``
checks it against the set of input pixels a unit's gradient reaches.

Coordinates: boxes are half-open ``(y0, y1, x0, x1)``, i.e. ``image[y0:y1, x0:x1]``, in input pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import keras
import numpy as np
import torch
from tqdm.auto import tqdm

from .keras_to_torch import _chain, _device, _keras_model, _same_padding

# Layers that map each position to itself: they change no receptive field.
_POINTWISE = ("Activation", "ReLU", "Dropout", "BatchNormalization", "LeakyReLU", "InputLayer")
_POOLS = ("MaxPooling2D", "AveragePooling2D")


@dataclass(frozen=True)
class ReceptiveField:
    """The input pixels a unit of ``layer`` depends on, per axis (rows, cols).

    Unit (i, j) sees rows ``offset[0] + i*stride[0]`` .. ``+ size[0] - 1`` (and likewise for columns).
    ``offset`` is negative when the field of the first unit reaches into the zero padding: that is the
    "padding info" — the part of a field outside the image is padding, not pixels.
    """

    layer: str
    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    input_size: tuple[int, int]
    layer_size: tuple[int, int]

    def box(self, i: int, j: int, clip: bool = True) -> tuple[int, int, int, int]:
        """Half-open input box (y0, y1, x0, x1) of unit (i, j), clipped to the image unless ``clip=False``."""
        h, w = self.layer_size
        if not (0 <= i < h and 0 <= j < w):
            raise ValueError(f"unit ({i}, {j}) is outside layer {self.layer!r}, whose map is {h}x{w}: "
                             f"use 0 <= i < {h}, 0 <= j < {w}")
        y0 = self.offset[0] + i * self.stride[0]
        x0 = self.offset[1] + j * self.stride[1]
        y1, x1 = y0 + self.size[0], x0 + self.size[1]
        if clip:
            (hh, ww) = self.input_size
            y0, y1, x0, x1 = max(y0, 0), min(y1, hh), max(x0, 0), min(x1, ww)
        return int(y0), int(y1), int(x0), int(x1)


def unit_field(field: ReceptiveField, i: int, j: int, clip: bool = True) -> tuple[int, int, int, int]:
    """The input box (y0, y1, x0, x1), half-open, of unit (i, j) of ``field.layer``; clipped at the border."""
    return field.box(i, j, clip=clip)


def _layer_names(model: keras.Model) -> str:
    return ", ".join(l.name for l in model.layers)


def _get_layer(model: keras.Model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        raise ValueError(f"{model.name} has no layer {name!r}: choose one of {_layer_names(model)}") from None


def _spatial_names(model: keras.Model) -> str:
    return ", ".join(l.name for l in _chain(model) if len(l.output.shape) == 4)


def receptive_field(model, layer_name: str) -> ReceptiveField:
    """Receptive field of ``layer_name`` (a conv or pooling layer) of a Backbone / Keras chain model.

    The recurrence, per axis, starting at the input with size r=1, jump j=1, offset a=0: a layer with
    kernel k (dilation d: effective k = (k-1)d + 1), stride s and padding p before the first row makes
    r += (k-1)*j, a -= p*j, j *= s. Keras' "same" padding puts the odd padding pixel after, so
    p = total // 2 (it depends on the layer's input size, which is why the model is needed).
    """
    model = _keras_model(model)
    target = _get_layer(model, layer_name)
    if len(target.output.shape) != 4:
        raise ValueError(f"layer {layer_name!r} is not a spatial map: receptive fields are for conv and pooling "
                         f"layers; choose one of {_spatial_names(model)}")
    size, jump, offset = [1, 1], [1, 1], [0, 0]
    for layer in _chain(model):
        kind = type(layer).__name__
        if kind == "Conv2D" or kind in _POOLS:
            if kind == "Conv2D":
                kernel, stride, dilation = layer.kernel_size, layer.strides, layer.dilation_rate
            else:
                kernel, stride, dilation = layer.pool_size, layer.strides, (1, 1)
            in_size = layer.input.shape[1:3]
            for ax in range(2):
                eff = (kernel[ax] - 1) * dilation[ax] + 1
                if layer.padding == "same":
                    before = _same_padding(int(in_size[ax]), kernel[ax], stride[ax], dilation[ax])[0]
                elif layer.padding == "valid":
                    before = 0
                else:
                    raise ValueError(f"layer {layer.name!r} has padding {layer.padding!r}: "
                                     "only 'same' and 'valid' are supported")
                size[ax] += (eff - 1) * jump[ax]
                offset[ax] -= before * jump[ax]
                jump[ax] *= stride[ax]
        elif kind not in _POINTWISE:
            raise ValueError(f"cannot follow the receptive field through layer {layer.name!r} ({kind}): supported are "
                             f"Conv2D, {', '.join(_POOLS)} and point-wise layers ({', '.join(_POINTWISE)})")
        if layer.name == layer_name:
            break
    inp = model.inputs[0].shape
    out = target.output.shape
    return ReceptiveField(layer_name, tuple(size), tuple(jump), tuple(offset), (int(inp[1]), int(inp[2])),
                          (int(out[1]), int(out[2])))


# ----------------------------------------------------------------------------------------------------
# The top-k units of one channel, streamed


class Hit(NamedTuple):
    image: int  # index of the image in the stream (0-based, counting across batches)
    position: tuple[int, int]  # (i, j) in the layer's map
    value: float


def _batches(images, batch_size: int):
    """(batches, total or None): slices of an array, or the items of an iterable re-cut to ``batch_size``."""
    if hasattr(images, "ndim") and hasattr(images, "shape"):
        arr = images[None] if images.ndim == 3 else images
        return (arr[s : s + batch_size] for s in range(0, len(arr), batch_size)), math.ceil(len(arr) / batch_size)

    def gen():
        for item in images:
            item = item if hasattr(item, "ndim") else np.asarray(item)
            item = item[None] if item.ndim == 3 else item
            for s in range(0, len(item), batch_size):
                yield item[s : s + batch_size]

    return gen(), None


def top_activations(backbone, images, layer: str, channel: int, k: int = 9, batch_size: int = 64,
                    progress: bool = True) -> list[Hit]:
    """The ``k`` strongest units of ``channel`` of ``layer`` over every position of every image.

    ``images``: RGB images (N, H, W, 3) for a Backbone (preprocessed here) — or, for a plain keras.Model,
    its preprocessed input — as one array, or any iterable of batches / single images (a generator is
    fine: nothing but the current batch and the running top k is ever held). Sorted by value, strongest
    first; ties go to the earlier (image, i, j), so the answer does not depend on the batch size.
    """
    model = _keras_model(backbone)
    target = _get_layer(model, layer)
    shape = target.output.shape
    if len(shape) != 4:
        raise ValueError(f"layer {layer!r} is not a spatial map: choose a conv or pooling layer, one of {_spatial_names(model)}")
    channels = int(shape[-1])
    if not 0 <= channel < channels:
        raise ValueError(f"channel {channel} is out of range: layer {layer!r} has {channels} channels (0..{channels - 1})")
    if k < 1 or batch_size < 1:
        raise ValueError(f"k and batch_size must be >= 1, got k={k}, batch_size={batch_size}")
    sub = keras.Model(model.inputs[0], target.output, name=f"{model.name}_{layer}")
    if backbone is not model:
        to_input = backbone.tensor  # RGB -> preprocessed tensor on the backbone's device
    else:
        dev = _device(model)
        to_input = lambda b: torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b,  # noqa: E731
                                             dtype=torch.float32).to(dev)

    best_v = best_i = None
    seen = 0  # images so far: the global index of the next batch's first image
    batches, total = _batches(images, batch_size)
    units = int(shape[1]) * int(shape[2])
    with torch.no_grad():
        for batch in tqdm(batches, total=total, desc=f"{layer}[{channel}] top-{k}", disable=not progress, leave=False):
            x = to_input(batch)
            act = sub(x)[..., channel].reshape(-1)  # (B*h*w,), image-major then row-major: global flat index order
            # Everything that could still make the top k: all values >= this batch's k-th largest (ties
            # included, in index order), merged with the running top k by a stable sort.
            threshold = torch.topk(act, min(k, act.numel())).values[-1]
            cand = torch.nonzero(act >= threshold).reshape(-1)
            vals, idx = act[cand], cand + seen * units
            if best_v is not None:
                vals, idx = torch.cat([best_v, vals]), torch.cat([best_i, idx])
            order = torch.sort(vals, descending=True, stable=True).indices[:k]
            best_v, best_i = vals[order], idx[order]
            seen += len(x)
    if best_v is None:
        return []
    w = int(shape[2])
    hits = []
    for v, flat in zip(best_v.tolist(), best_i.tolist()):
        n, pos = divmod(int(flat), units)
        hits.append(Hit(n, divmod(pos, w), float(v)))
    return hits


def top_activations_all(backbone, images, layers=None, k: int = 9, batch_size: int = 64,
                        progress: bool = True) -> dict[str, list[list[Hit]]]:
    """``{layer: [hits of channel 0, hits of channel 1, ...]}``: :func:`top_activations` for every channel of
    every layer in ``layers`` (default: every Conv2D layer), in **one** pass over the images.

    Each list of hits is exactly what ``top_activations(backbone, images, layer, channel, k)`` returns (the
    same order, the same ties). One pass costs about one forward of the images through the deepest layer
    asked for, so a browser of layers and channels can find every answer ready.
    """
    model = _keras_model(backbone)
    if layers is None:
        layers = [l.name for l in _chain(model) if type(l).__name__ == "Conv2D"]
    layers = list(layers)
    if not layers:
        raise ValueError("no layers given: name at least one conv or pooling layer")
    outputs = []
    for name in layers:
        target = _get_layer(model, name)
        if len(target.output.shape) != 4:
            raise ValueError(f"layer {name!r} is not a spatial map: choose conv or pooling layers, from {_spatial_names(model)}")
        outputs.append(target.output)
    if k < 1 or batch_size < 1:
        raise ValueError(f"k and batch_size must be >= 1, got k={k}, batch_size={batch_size}")
    sub = keras.Model(model.inputs[0], outputs, name=f"{model.name}_top_all")
    if backbone is not model:
        to_input = backbone.tensor
    else:
        dev = _device(model)
        to_input = lambda b: torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b,  # noqa: E731
                                             dtype=torch.float32).to(dev)

    # Per layer, the running candidates: channel, value, global flat index (image-major, then row-major).
    best = {name: (np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.int64)) for name in layers}
    seen = 0
    batches, total = _batches(images, batch_size)
    with torch.no_grad():
        for batch in tqdm(batches, total=total, desc=f"top-{k} of {len(layers)} layers", disable=not progress, leave=False):
            x = to_input(batch)
            acts = sub(x)
            acts = [acts] if len(layers) == 1 and not isinstance(acts, (list, tuple)) else acts
            for name, act in zip(layers, acts):
                b, h, w, c = act.shape
                rows = act.reshape(b * h, w, c)  # one map row per entry: row r, column j is flat index r * w + j
                # A bound on each channel's k-th largest value: the k-th largest of the rows' maxima (those are
                # k distinct units, so at least k units reach it). Only rows whose maximum reaches it can hold a
                # unit of the top k; every unit >= the bound in them is a candidate (ties included, as in
                # top_activations). Cheaper than a top-k over all B*h*w units of every channel.
                peaks = rows.amax(dim=1)  # (b*h, c)
                if b * h >= k:
                    bound = torch.topk(peaks, k, dim=0).values[-1]  # (c,)
                else:  # fewer rows than k: no bound from them, every unit is a candidate
                    bound = rows.amin(dim=(0, 1))
                row, chan = torch.nonzero(peaks >= bound, as_tuple=True)
                values = rows[row, :, chan]  # (candidate rows, w)
                which, col = torch.nonzero(values >= bound[chan][:, None], as_tuple=True)
                chan, pos, vals = chan[which], row[which] * w + col, values[which, col]
                old_c, old_v, old_i = best[name]
                cs = np.concatenate([old_c, chan.cpu().numpy()])
                vs = np.concatenate([old_v, vals.float().cpu().numpy()])
                ids = np.concatenate([old_i, pos.cpu().numpy() + seen * h * w])
                order = np.lexsort((ids, -vs, cs))  # by channel, then strongest first, then earliest
                cs, vs, ids = cs[order], vs[order], ids[order]
                first = np.searchsorted(cs, cs, side="left")
                keep = (np.arange(len(cs)) - first) < k
                best[name] = (cs[keep], vs[keep], ids[keep])
            seen += len(x)
    result = {}
    for name, out in zip(layers, outputs):
        h, w, channels = int(out.shape[1]), int(out.shape[2]), int(out.shape[3])
        per = [[] for _ in range(channels)]
        for ch, v, flat in zip(*best[name]):
            n, p = divmod(int(flat), h * w)
            per[int(ch)].append(Hit(n, divmod(p, w), float(v)))
        result[name] = per
    return result


# ----------------------------------------------------------------------------------------------------
# Cropping


def patches(images, hits: Iterable, field: ReceptiveField, fill=128) -> np.ndarray:
    """Each hit's receptive field cropped from its image: (len(hits), size_y, size_x, C), all the same size.

    A field that runs off the image is clipped, and the crop is placed where it sits inside the full
    (unclipped) box on a canvas of ``fill`` (mid-grey by default): the unit's centre stays at the centre
    of every patch, and the grey band shows how much of the field was padding.
    """
    hits = list(hits)
    sy, sx = field.size
    first = np.asarray(images[hits[0][0]]) if hits else np.zeros((1, 1, 3), np.uint8)
    out = np.full((len(hits), sy, sx) + first.shape[2:], fill, dtype=first.dtype)
    for n, hit in enumerate(hits):
        index, (i, j) = hit[0], hit[1]
        image = np.asarray(images[index])
        if image.shape[:2] != field.input_size:
            raise ValueError(f"image {index} is {image.shape[:2]} but the field is for {field.input_size} inputs: "
                             "pass the images the hits were found in")
        y0u, _, x0u, _ = field.box(i, j, clip=False)
        y0, y1, x0, x1 = field.box(i, j)
        out[n, y0 - y0u : y1 - y0u, x0 - x0u : x1 - x0u] = image[y0:y1, x0:x1]
    return out


def patch_grid(crops: np.ndarray, ncols: int | None = None, gap: int = 2, fill=255) -> np.ndarray:
    """Crops (K, h, w, C) tiled into one image (rows of ``ncols``, ``gap`` pixels of ``fill`` between them)."""
    crops = np.asarray(crops)
    k, h, w = crops.shape[:3]
    ncols = ncols or max(1, math.ceil(math.sqrt(k)))
    nrows = max(1, math.ceil(k / ncols))
    grid = np.full((nrows * h + (nrows - 1) * gap, ncols * w + (ncols - 1) * gap) + crops.shape[3:], fill, crops.dtype)
    for n in range(k):
        r, c = divmod(n, ncols)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = crops[n]
    return grid
