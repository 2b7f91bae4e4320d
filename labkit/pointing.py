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
