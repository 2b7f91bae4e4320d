"""checks.deletion_curve and checks.cascading_randomisation (stage 08): the solutions pass, and each typical
mistake is caught with its own hint."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import labkit  # noqa: F401  (pins the Keras backend)
from labkit import evaluation

E = importlib.import_module("labkit.checks.evaluation")
from labkit.checks import cascading_randomisation as check_cascade, deletion_curve as check_deletion  # noqa: E402


# ---------------------------------------------------------------------------- the notebook's solutions


def curve_solution(score, image, importance, fill, steps):
    h, w, c = image.shape
    order = np.argsort(-importance.ravel())
    counts = np.linspace(0, h * w, steps + 1).round().astype(int)
    pixels, fill_pixels = image.reshape(-1, c), fill.reshape(-1, c)
    batch = []
    for k in counts:
        x = pixels.copy()
        x[order[:k]] = fill_pixels[order[:k]]
        batch.append(x.reshape(h, w, c))
    return score(np.stack(batch))


def auc_solution(curve):
    return np.trapezoid(curve, dx=1 / (len(curve) - 1))


def cascade_solution(backbone, images, explain, layers, seed):
    out = []
    with evaluation.restored(backbone):
        for layer in layers:
            evaluation.randomise(backbone, layer, seed)
            out.append(explain(backbone, images))
    return out


# ---------------------------------------------------------------------------- deletion mistakes


def _curve(order_fn=None, counts_fn=None, cumulative=True, fill_fn=None, flat=False, insertion=False, per_step=False,
           inplace=False):
    def fn(score, image, importance, fill, steps):
        h, w, c = image.shape
        order = (order_fn or (lambda m: np.argsort(-m.ravel())))(importance)
        counts = np.linspace(0, h * w, steps + 1).round().astype(int)
        counts = counts_fn(counts) if counts_fn else counts
        f = fill_fn(fill) if fill_fn else fill
        start, end = (f, image) if insertion else (image, f)
        batch = []
        for i, k in enumerate(counts):
            lo = 0 if cumulative or i == 0 else counts[i - 1]
            if flat:
                x = start.ravel().copy()
                x[order[lo:k]] = end.ravel()[order[lo:k]]
            else:
                x = start if inplace else start.copy()
                x = x.reshape(-1, c)
                x[order[lo:k]] = end.reshape(-1, c)[order[lo:k]]
            batch.append(x.reshape(h, w, c).copy())
        if per_step:
            return np.concatenate([score(b[None]) for b in batch])
        return score(np.stack(batch))

    return fn


CURVE_MISTAKES = {
    "ascending order": (_curve(order_fn=lambda m: np.argsort(m.ravel())), E.HINT_ORDER),
    "no step 0": (_curve(counts_fn=lambda c: c[1:]), E.HINT_COUNT),
    "no last step": (_curve(counts_fn=lambda c: c[:-1]), E.HINT_COUNT),
    "not cumulative": (_curve(cumulative=False), E.HINT_NOT_CUMULATIVE),
    "zero fill": (_curve(fill_fn=np.zeros_like), E.HINT_ZERO_FILL),
    "channels": (_curve(flat=True), E.HINT_CHANNELS),
    "insertion": (_curve(insertion=True), E.HINT_INSERTION),
    "one call per step": (_curve(per_step=True), E.HINT_ONE_CALL.format(calls=7)),
    "in place": (_curve(inplace=True), E.HINT_INPLACE),
    "stub": (lambda *a: (_ for _ in ()).throw(NotImplementedError()), None),
}

AUC_MISTAKES = {
    "sum": (np.sum, E.HINT_AUC_SUM),
    "sum / steps": (lambda c: np.sum(c) / (len(c) - 1), E.HINT_AUC_SUM),
    "dx 1": (np.trapezoid, E.HINT_AUC_DX),
    "mean": (np.mean, E.HINT_AUC_MEAN),
    "flipped": (lambda c: 1 - auc_solution(c), E.HINT_AUC_FLIP),
}


def test_the_solution_passes_the_hand_made_cases(capsys):
    assert check_deletion(curve_solution, auc_solution) is True
    out = capsys.readouterr().out
    assert out.startswith("PASS [08 evaluating explanations]") and out.count("\n") == 1


@pytest.mark.parametrize("name", list(CURVE_MISTAKES))
def test_each_deletion_mistake_gets_its_hint(name, capsys):
    fn, hint = CURVE_MISTAKES[name]
    assert check_deletion(fn, auc_solution) is False
    out = capsys.readouterr().out
    if hint is None:
        assert out.startswith("HINT [08 evaluating explanations]") and "NotImplementedError" in out
    else:
        assert out == f"HINT [08 evaluating explanations] {hint}\n"


@pytest.mark.parametrize("name", list(AUC_MISTAKES))
def test_each_auc_mistake_gets_its_hint(name, capsys):
    fn, hint = AUC_MISTAKES[name]
    assert check_deletion(curve_solution, fn) is False
    assert capsys.readouterr().out == f"HINT [08 evaluating explanations] {hint}\n"


def test_the_deletion_mutants_are_distinguishable():
    for case in E._curve_cases():
        ref = E.reference_curve(*case)
        answers = [w for _, w in E.curve_mutants(*case)]
        for a in answers:
            assert not E.close(a, ref)
        hints = [h for h, _ in E.curve_mutants(*case)]
        for i, a in enumerate(answers):
            for j, b in enumerate(answers):
                if hints[i] != hints[j]:
                    assert not E.close(a, b), (hints[i], hints[j])


def test_the_real_case_agrees_with_the_library(capsys):
    from labkit import models

    backbone = models.load("minivgg", weights=None)
    image = np.random.default_rng(0).integers(0, 256, (96, 96, 3)).astype(np.uint8)
    importance = np.random.default_rng(1).random((96, 96)).astype(np.float32)
    assert check_deletion(curve_solution, auc_solution, backbone, image, importance, 2) is True
    assert "on minivgg the area is" in capsys.readouterr().out


# ---------------------------------------------------------------------------- cascading mistakes


def _independent(backbone, images, explain, layers, seed):
    out = []
    for layer in layers:
        with evaluation.restored(backbone):
            evaluation.randomise(backbone, layer, seed)
            out.append(explain(backbone, images))
    return out


def _explain_first(backbone, images, explain, layers, seed):
    out = []
    with evaluation.restored(backbone):
        for layer in layers:
            out.append(explain(backbone, images))
            evaluation.randomise(backbone, layer, seed)
    return out


def _bottom_up(backbone, images, explain, layers, seed):
    return cascade_solution(backbone, images, explain, layers[::-1], seed)


def _no_seed(backbone, images, explain, layers, seed):
    return cascade_solution(backbone, images, explain, layers, 0)


def _all_at_once(backbone, images, explain, layers, seed):
    with evaluation.restored(backbone):
        for layer in layers:
            evaluation.randomise(backbone, layer, seed)
        return [explain(backbone, images) for _ in layers]


def _not_restored(backbone, images, explain, layers, seed):
    out = []
    for layer in layers:
        evaluation.randomise(backbone, layer, seed)
        out.append(explain(backbone, images))
    return out


def _last_only(backbone, images, explain, layers, seed):
    with evaluation.restored(backbone):
        for layer in layers:
            evaluation.randomise(backbone, layer, seed)
        return explain(backbone, images)


CASCADE_MISTAKES = {
    "independent": (_independent, E.HINT_INDEPENDENT),
    "explain before randomising": (_explain_first, E.HINT_BEFORE),
    "bottom up": (_bottom_up, E.HINT_REVERSED),
    "seed ignored": (_no_seed, E.HINT_SEED),
    "all at once": (_all_at_once, E.HINT_ALL_AT_ONCE),
    "weights not restored": (_not_restored, E.HINT_NOT_RESTORED),
}


def test_the_cascade_solution_passes(capsys):
    assert check_cascade(cascade_solution) is True
    out = capsys.readouterr().out
    assert out.startswith("PASS [08 evaluating explanations]") and out.count("\n") == 1


@pytest.mark.parametrize("name", list(CASCADE_MISTAKES))
def test_each_cascade_mistake_gets_its_hint(name, capsys):
    fn, hint = CASCADE_MISTAKES[name]
    before = [w.copy() for w in E.tiny_backbone().model.get_weights()]
    assert check_cascade(fn) is False
    assert capsys.readouterr().out == f"HINT [08 evaluating explanations] {hint}\n"
    after = E.tiny_backbone().model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after)), "the check must put the shared model back"


def test_a_single_batch_instead_of_a_list_is_named(capsys):
    assert check_cascade(_last_only) is False
    out = capsys.readouterr().out
    assert out.startswith(f"HINT [08 evaluating explanations] {E.HINT_LIST}")
