"""The stage 01 check: it passes the notebook's solution and names each mistake it claims to catch."""

from __future__ import annotations

import numpy as np
import pytest

import labkit  # noqa: F401  (pins the Keras backend)
from labkit import patches as P
from labkit.checks.patches import CASES, _case, patches, reference_top_k


def top_k_units(activations, k):
    """The solution in solutions/01_max_activating_patches.ipynb."""
    # Flat indices of the k largest, strongest first; a stable sort keeps ties in index order, as labkit does.
    flat = np.argsort(-activations, axis=None, kind="stable")[:k]
    units = []
    for f in flat:
        n, i, j = np.unravel_index(f, activations.shape)
        units.append((int(n), (int(i), int(j)), float(activations[n, i, j])))
    return units


def _order(acts):
    return np.argsort(-acts, axis=None, kind="stable")


def weakest(acts, k):
    return [(n, (i, j), float(acts[n, i, j])) for n, i, j in zip(*np.unravel_index(np.argsort(acts, axis=None)[:k], acts.shape))]


def ascending(acts, k):
    return top_k_units(acts, k)[::-1]


def swapped(acts, k):
    return [(n, (j, i), v) for n, (i, j), v in top_k_units(acts, k)]


def wrong_width(acts, k):
    n_, h, w = acts.shape
    out = []
    for f in _order(acts)[:k]:
        n, pos = divmod(int(f), h * w)
        out.append((n, (pos // h, pos % h), float(acts.reshape(-1)[f])))
    return out


def one_per_image(acts, k):
    best = []
    for n, a in enumerate(acts):
        i, j = np.unravel_index(a.argmax(), a.shape)
        best.append((n, (int(i), int(j)), float(a[i, j])))
    return sorted(best, key=lambda u: -u[2])[:k]


def no_image_index(acts, k):
    return [((i, j), v) for _, (i, j), v in top_k_units(acts, k)]


def no_image_index_flat(acts, k):
    return [(i, j, v) for _, (i, j), v in top_k_units(acts, k)]


def flat_tuples(acts, k):
    return [(n, i, j, v) for n, (i, j), v in top_k_units(acts, k)]


def sorts_in_place(acts, k):
    units = top_k_units(acts, k)
    acts.sort(axis=-1)
    return units


def argpartition_unsorted(acts, k):
    """The right k units in argpartition's order (not sorted)."""
    flat = np.argpartition(acts, -k, axis=None)[-k:]
    units = [(int(f) // acts[0].size, divmod(int(f) % acts[0].size, acts.shape[2]), float(acts.reshape(-1)[f])) for f in flat]
    assert units != top_k_units(acts, k)
    return units


def wrong_count(acts, k):
    return top_k_units(acts, k + 1)


def wrong_values(acts, k):
    return [(n, (i, j), v + 1.0) for n, (i, j), v in top_k_units(acts, k)]


def returns_nothing(acts, k):
    top_k_units(acts, k)


def stub(acts, k):
    raise NotImplementedError("replace this line with your solution")


def crashes(acts, k):
    return acts[len(acts)]


MISTAKES = [
    (weakest, "WEAKEST"),
    (ascending, "wrong order"),
    (swapped, "i and j are swapped"),
    (wrong_width, "unravelled with the wrong width"),
    (one_per_image, "only the best unit of each image"),
    (no_image_index, "no image index"),
    (no_image_index_flat, "no image index"),
    (flat_tuples, "in a tuple of its own"),
    (argpartition_unsorted, "wrong order"),
    (sorts_in_place, "changed the activations"),
    (wrong_count, "return exactly k"),
    (wrong_values, "is not activations[n, i, j]"),
    (returns_nothing, "returned None"),
    (stub, "still raises NotImplementedError"),
    (crashes, "raised IndexError"),
]


def test_solution_passes(capsys):
    assert patches(top_k_units) is True
    out = capsys.readouterr().out
    assert out.startswith("PASS [01 patches]") and out.count("\n") == 1


def test_other_correct_answers_pass(capsys):
    """Lists instead of tuples, numpy scalars, torch.topk: the structure, not the types, is checked."""
    import torch

    def with_torch(acts, k):
        t = torch.as_tensor(acts).reshape(-1)
        vals, idx = torch.topk(t, k)
        h, w = acts.shape[1:]
        return [[int(f) // (h * w), [int(f) % (h * w) // w, int(f) % w], v] for f, v in zip(idx, vals)]

    def numpy_scalars(acts, k):
        return [(np.int64(n), (np.int64(i), np.int64(j)), np.float32(v)) for n, (i, j), v in top_k_units(acts, k)]

    assert patches(with_torch) and patches(numpy_scalars)
    assert capsys.readouterr().out.count("PASS") == 2


@pytest.mark.parametrize("student, hint", MISTAKES, ids=[m[0].__name__ for m in MISTAKES])
def test_each_mistake_gets_its_hint(student, hint, capsys):
    assert patches(student) is False
    out = capsys.readouterr().out
    assert out.startswith("HINT [01 patches]") and out.count("\n") == 1, out
    assert hint in out, out


def test_reference_is_the_brute_force_top_k():
    """The check's reference (labkit.patches.top_activations on an identity model) is the plain sort."""
    for seed, n, h, w, crowd, k in CASES:
        acts = _case(seed, n, h, w, crowd)
        ref, brute = reference_top_k(acts, k), top_k_units(acts, k)
        assert [u[:2] for u in ref] == [u[:2] for u in brute]
        assert [u[2] for u in ref] == pytest.approx([u[2] for u in brute], rel=1e-6)


def test_cases_separate_every_mistake():
    """On the check's arrays no mistake gives the right answer by accident (else its hint could never show)."""
    from labkit.checks.patches import _mutants

    for seed, n, h, w, crowd, k in CASES:
        acts = _case(seed, n, h, w, crowd)
        assert len(np.unique(acts)) == acts.size  # no ties: the order is unique
        assert h != w
        ref = reference_top_k(acts, k)
        for hint, wrong in _mutants(acts, k).items():
            assert [u[:2] for u in wrong] != [u[:2] for u in ref], hint


def test_reference_agrees_with_streaming_on_real_activations():
    """top_k_units of a layer's activations equals top_activations streamed over the same images."""
    import keras
    import torch

    from labkit import data, models

    bb = models.load("minivgg", weights=None)
    images = data.make_shapes(6, seed=3).images
    sub = keras.Model(bb.model.inputs, bb.layer("block3_conv1").output)
    with torch.no_grad():
        all_acts = sub(bb.tensor(images)).cpu().numpy()
    channel = int(all_acts.max(axis=(0, 1, 2)).argmax())  # random weights: some channels may be dead (all 0)
    acts = all_acts[..., channel]
    hits = P.top_activations(bb, images, "block3_conv1", channel, k=5, batch_size=4, progress=False)
    assert [(h.image, h.position) for h in hits] == [u[:2] for u in top_k_units(acts, 5)]
