"""The pointing game: does a map's maximum fall on the object? Scored against ground-truth masks."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation


def _grown(masks: np.ndarray, tolerance: int) -> np.ndarray:
    masks = np.asarray(masks, dtype=bool)
    if tolerance <= 0:
        return masks
    disk = np.hypot(*np.mgrid[-tolerance : tolerance + 1, -tolerance : tolerance + 1]) <= tolerance
    return np.stack([binary_dilation(m, structure=disk) for m in masks])


def hits(maps: np.ndarray, masks: np.ndarray, tolerance: int = 3) -> np.ndarray:
    """Per image: True where the map's maximum lies within ``tolerance`` pixels of the object's mask."""
    maps, masks = np.asarray(maps), np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ: upsample the maps to the image size")
    flat = maps.reshape(len(maps), -1).argmax(axis=1)
    ys, xs = np.unravel_index(flat, maps.shape[1:])
    return _grown(masks, tolerance)[np.arange(len(maps)), ys, xs]


def pointing_accuracy(maps: np.ndarray, masks: np.ndarray, tolerance: int = 3) -> float:
    """Share of images whose map points at the object."""
    return float(hits(maps, masks, tolerance).mean())


def centre_baseline(masks: np.ndarray, tolerance: int = 3) -> float:
    """The score of a 'map' that always points at the image centre: what a method must beat."""
    masks = np.asarray(masks, dtype=bool)
    h, w = masks.shape[1:]
    centre = np.zeros(masks.shape, np.float32)
    centre[:, h // 2, w // 2] = 1.0
    return pointing_accuracy(centre, masks, tolerance)


def cell_hits(raw_maps: np.ndarray, masks: np.ndarray, tolerance: int = 3) -> np.ndarray:
    """Per image: True where the map's strongest *cell* (at its own, coarse resolution) covers the object.

    A 6 x 6 Grad-CAM map of a 96 px image can only say which 16 x 16 block holds the evidence; upsampling
    does not add that information (a bilinear map's maximum always sits on a cell centre). This scores
    the map at the resolution it has: a hit when the max cell's block meets the mask (grown by tolerance).
    """
    raw_maps, masks = np.asarray(raw_maps), np.asarray(masks, dtype=bool)
    n, h, w = raw_maps.shape
    H, W = masks.shape[1:]
    if H % h or W % w:
        raise ValueError(f"masks {masks.shape[1:]} are not a whole number of cells of maps {raw_maps.shape[1:]}")
    ch, cw = H // h, W // w
    grown = _grown(masks, tolerance)
    flat = raw_maps.reshape(n, -1).argmax(axis=1)
    ys, xs = np.unravel_index(flat, (h, w))
    return np.array([g[y * ch : (y + 1) * ch, x * cw : (x + 1) * cw].any() for g, y, x in zip(grown, ys, xs)])
