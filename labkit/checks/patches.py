"""Check for stage 01: ``top_k_units(activations, k)``, the k strongest units of one channel.

The student's function gets one channel's activations over a batch, ``(N, h, w)``, and returns the ``k``
strongest units as ``[(image index, (i, j), value), ...]``, strongest first. The reference is
:func:`labkit.patches.top_activations`, run on a one-layer Keras model that passes the activations
through unchanged, so the check and the lab's streaming code agree by construction.

The test arrays are small, tie-free and built so that every listed mistake gives a different answer:
h != w (i and j swapped, or the flat index unravelled with the wrong width, land elsewhere), more images
than k with the strongest units crowded into one image (one unit per image is not the top k overall).
"""

from __future__ import annotations

import functools
import numbers

import numpy as np

from .base import Hint, call_student, report

STAGE = "01 patches"


# ----------------------------------------------------------------------------------------------------
# The cases and the reference


def _case(seed: int, n: int, h: int, w: int, crowd: int) -> np.ndarray:
    """Tie-free activations (n, h, w) whose ``crowd`` strongest units all lie in one image."""
    rng = np.random.default_rng(seed)
    acts = rng.normal(size=(n, h, w)).astype(np.float32)
    acts = np.maximum(acts, 0) + rng.uniform(0, 1e-3, size=acts.shape).astype(np.float32)  # ReLU-like, no ties
    host = n // 2
    cells = rng.choice(h * w, size=crowd, replace=False)
    for rank, cell in enumerate(cells):
        acts[host].flat[cell] = np.float32(6.0 - 0.5 * rank)
    return acts


CASES = ((0, 10, 5, 8, 4, 8), (1, 4, 7, 3, 3, 5))  # (seed, N, h, w, crowd, k)


@functools.lru_cache(maxsize=8)
def _identity_model(h: int, w: int):
    import keras

    inputs = keras.Input((h, w, 1), name="activations")
    out = keras.layers.Identity(name="units")(inputs)
    return keras.Model(inputs, out, name="identity")


def reference_top_k(activations: np.ndarray, k: int) -> list[tuple[int, tuple[int, int], float]]:
    """The reference answer: ``labkit.patches.top_activations`` on a model whose layer is the activations."""
    from .. import patches

    acts = np.asarray(activations, dtype=np.float32)
    model = _identity_model(*acts.shape[1:])
    hits = patches.top_activations(model, acts[..., None], "units", 0, k=k, progress=False)
    return [(int(h.image), (int(h.position[0]), int(h.position[1])), float(h.value)) for h in hits]


def _mutants(acts: np.ndarray, k: int) -> dict:
    """Hint -> the answer that mistake gives, as a list of (n, (i, j), value)."""
    n, h, w = acts.shape
    flat = acts.reshape(-1)

    def units(order, unravel=lambda pos: divmod(pos, w)):
        out = []
        for f in order:
            img, pos = divmod(int(f), h * w)
            out.append((img, tuple(int(v) for v in unravel(pos)), float(flat[f])))
        return out

    strongest = np.argsort(-flat, kind="stable")[:k]
    weakest = np.argsort(flat, kind="stable")[:k]
    per_image = acts.reshape(n, -1).argmax(axis=1)
    per_image_flat = np.arange(n) * h * w + per_image
    per_image_flat = per_image_flat[np.argsort(-flat[per_image_flat], kind="stable")][:k]
    return {
        "these are the k WEAKEST units: sort so that the largest activations come first (descending)": units(weakest),
        "these are the right units in the wrong order: list them strongest first": units(strongest[::-1]),
        "i and j are swapped: i is the row (first axis of the map), j the column": [
            (img, (j, i), v) for img, (i, j), v in units(strongest)
        ],
        f"the positions are unravelled with the wrong width: a flat index within one image is i * w + j, "
        f"with w = activations.shape[2] (here {w}), e.g. np.unravel_index(flat, activations.shape)": units(
            strongest, unravel=lambda pos: divmod(pos, h)
        ),
        "you kept only the best unit of each image: the k strongest units overall may come from the same "
        "image; rank every unit of every image together": units(per_image_flat),
    }


# ----------------------------------------------------------------------------------------------------
# Reading the student's answer


def _is_int(v) -> bool:
    return isinstance(v, (numbers.Integral, np.integer)) or (
        isinstance(v, np.ndarray) and v.ndim == 0 and np.issubdtype(v.dtype, np.integer)
    )


def _is_number(v) -> bool:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # numpy / torch scalars
        v = v.item()
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _seq(v) -> bool:
    return isinstance(v, (tuple, list, np.ndarray)) or (hasattr(v, "__len__") and hasattr(v, "__getitem__") and not isinstance(v, str))


def _as_units(answer, ref, k: int) -> list[tuple[int, tuple[int, int], float]]:
    """The answer as [(n, (i, j), v)], or a Hint that says what is wrong with its structure."""
    if answer is None:
        raise Hint("top_k_units returned None: return the list of units")
    if not _seq(answer):
        raise Hint(f"top_k_units should return a list of (image index, (i, j), value), got a {type(answer).__name__}")
    items = list(answer)
    if len(items) != k:
        raise Hint(f"top_k_units returned {len(items)} units for k={k}: return exactly k")
    out = []
    for item in items:
        if not _seq(item):
            raise Hint(f"each unit should be a tuple (image index, (i, j), value), got a {type(item).__name__}")
        item = list(item)
        if len(item) == 4 and all(_is_number(v) for v in item):
            raise Hint("each unit should be (image index, (i, j), value) with the position in a tuple of its own, "
                       "not 4 numbers in a row")
        if len(item) == 2 and _seq(item[0]) and len(item[0]) == 2 and _is_number(item[1]):
            raise Hint("your units have no image index: return (image index, (i, j), value); the position alone "
                       "does not say which image to crop the patch from")
        if len(item) == 3 and all(_is_number(v) for v in item):
            positions = [p for _, p, _ in ref]
            if [(int(item[0]), int(item[1])) for item in map(list, items)] == positions:
                raise Hint("your units have no image index: return (image index, (i, j), value); the position "
                           "alone does not say which image to crop the patch from")
            raise Hint("each unit should be (image index, (i, j), value): the second item is the position (i, j)")
        if len(item) != 3 or not _seq(item[1]) or len(item[1]) != 2:
            raise Hint("each unit should be a tuple of three: (image index, (i, j), value)")
        n, (i, j), v = item[0], tuple(item[1]), item[2]
        if not (_is_int(n) or (_is_number(n) and float(n).is_integer())):
            raise Hint(f"the image index should be an int, got {n!r}")
        if not all(_is_int(c) or (_is_number(c) and float(c).is_integer()) for c in (i, j)):
            raise Hint(f"the position (i, j) should be two ints, got {(i, j)!r}")
        if not _is_number(v):
            raise Hint(f"the value should be one number (the activation), got {type(v).__name__}")
        out.append((int(n), (int(i), int(j)), float(v)))
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        x[0] == y[0] and x[1] == y[1] and abs(x[2] - y[2]) <= 1e-5 * max(1.0, abs(y[2])) for x, y in zip(a, b)
    )


def patches(top_k_units) -> bool:
    """Stage 01: ``top_k_units(activations, k)`` returns the k strongest units, strongest first.

    Runs it on two small tie-free activation arrays and compares with the reference
    (:func:`labkit.patches.top_activations`); prints one PASS or HINT line and returns True or False.
    """

    def run() -> str:
        for seed, n, h, w, crowd, k in CASES:
            acts = _case(seed, n, h, w, crowd)
            given = acts.copy()
            ref = reference_top_k(acts, k)
            answer = call_student(top_k_units, given, k, what="top_k_units")
            if not np.array_equal(given, acts):
                raise Hint("top_k_units changed the activations it was given (e.g. sorted or overwrote them in "
                           "place): work on a copy, or use functions that return new arrays")
            units = _as_units(answer, ref, k)
            if _same(units, ref):
                continue
            for hint, wrong in _mutants(acts, k).items():
                if _same(units, wrong):
                    raise Hint(hint)
            for unit in units:
                if not _inside(unit, acts):
                    raise Hint(f"unit {unit[:2]} is outside the activations of shape {acts.shape}: "
                               "the image index is < N, i < h (rows), j < w (columns)")
                if abs(unit[2] - float(acts[unit[0]][unit[1]])) > 1e-5 * max(1.0, abs(unit[2])):
                    raise Hint(f"the value of unit {unit[:2]} is not activations[n, i, j]: return each unit's own activation")
            if sorted(u[:2] for u in units) == sorted(u[:2] for u in ref):
                raise Hint("these are the right units in the wrong order: list them strongest first (sort the k "
                           "you found by value, descending)")
            for rank, (got, want) in enumerate(zip(units, ref)):
                if not _same([got], [want]):
                    raise Hint(f"unit {rank} (0 = strongest) differs from the reference on activations of shape "
                               f"{acts.shape} with k={k}: re-read how a flat index splits into (image, i, j)")
        return "top_k_units finds the k strongest units of all the images, strongest first, as (image, (i, j), value)"

    return report(STAGE, run)


def _inside(unit, acts) -> bool:
    n, (i, j), _ = unit
    return 0 <= n < acts.shape[0] and 0 <= i < acts.shape[1] and 0 <= j < acts.shape[2]
