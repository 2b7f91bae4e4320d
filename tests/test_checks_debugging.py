"""The stage 09 check: it passes the notebook's solution and names each mistake it claims to catch.

It runs on minivgg_spurious, the model the notebook passes, and on minivgg_randlabels: the spurious model flips
every tagged shape, so several mistakes give its right number too; the second model tells them apart.
"""

from __future__ import annotations

import numpy as np
import pytest

from labkit import checks, data, models
from labkit.checks.debugging import CONTRAST, _mutants, check_shapes

CUE = data.CLASSES.index(data.CUE_CLASS)


@pytest.fixture(scope="module")
def spurious():
    return models.load("minivgg_spurious")


def flip_rate(backbone, images, labels, corners):
    """The solution in solutions/09_debugging_a_model.ipynb."""
    others = labels != CUE
    tagged = data.add_cue(images[others], corners[others])
    return float((backbone.predict(tagged).argmax(1) == CUE).mean())


# ----------------------------------------------------------------------------------------------------
# Mistakes, each as a student would write it


def counts_cue_class_too(backbone, images, labels, corners):
    return float((backbone.predict(data.add_cue(images, corners)).argmax(1) == CUE).mean())


def predicts_the_untagged_images(backbone, images, labels, corners):
    others = labels != CUE
    data.add_cue(images[others], corners[others])  # the tagged copy is thrown away
    return float((backbone.predict(images[others]).argmax(1) == CUE).mean())


def percentage(backbone, images, labels, corners):
    return 100 * flip_rate(backbone, images, labels, corners)


def divides_by_all(backbone, images, labels, corners):
    others = labels != CUE
    preds = backbone.predict(data.add_cue(images, corners)).argmax(1)
    return float(((preds == CUE) & others).sum() / len(labels))


def any_change(backbone, images, labels, corners):
    others = labels != CUE
    before = backbone.predict(images[others]).argmax(1)
    after = backbone.predict(data.add_cue(images[others], corners[others])).argmax(1)
    return float((before != after).mean())


def any_mistake(backbone, images, labels, corners):
    others = labels != CUE
    after = backbone.predict(data.add_cue(images[others], corners[others])).argmax(1)
    return float((after != labels[others]).mean())


def top_left_only(backbone, images, labels, corners):
    others = labels != CUE
    return float((backbone.predict(data.add_cue(images[others], 0)).argmax(1) == CUE).mean())


def per_image(backbone, images, labels, corners):
    others = labels != CUE
    return backbone.predict(data.add_cue(images[others], corners[others])).argmax(1) == CUE


def in_place(backbone, images, labels, corners):
    others = np.flatnonzero(labels != CUE)
    images[others] = data.add_cue(images[others], corners[others])
    return float((backbone.predict(images[others]).argmax(1) == CUE).mean())


def crashes(backbone, images, labels, corners):
    return data.add_cue(images, corners[0] + 7)


def stub(backbone, images, labels, corners):
    raise NotImplementedError


def test_the_solution_passes(spurious, capsys):
    assert checks.debugging(flip_rate, spurious)
    assert capsys.readouterr().out.startswith("PASS [09 debugging] flip rate")


@pytest.mark.parametrize("mistake, hint", [
    (counts_cue_class_too, "counted the circle images too"),
    (predicts_the_untagged_images, "same as without the tag"),
    (percentage, "percentage"),
    (divides_by_all, "divided by the number of ALL images"),
    (any_change, "every prediction the tag changed"),
    (any_mistake, "every tagged image the model gets wrong"),
    (top_left_only, "top-left corner"),
    (per_image, "return one number"),
    (in_place, "changed the images it was given"),
    (crashes, "flip_rate raised ValueError"),
    (stub, "NotImplementedError"),
])
def test_each_mistake_gets_its_hint(spurious, capsys, mistake, hint):
    assert not checks.debugging(mistake, spurious)
    out = capsys.readouterr().out
    assert out.startswith("HINT [09 debugging]") and hint in out, out


def test_each_mutant_differs_from_the_reference_with_one_of_the_check_models(spurious):
    s = check_shapes()
    spur, ref = _mutants(spurious, s.images, s.labels, s.corners)
    assert ref > 0.3  # the spurious model flips: the check's images make the point
    contrast, ref_c = _mutants(models.load(CONTRAST), s.images, s.labels, s.corners)
    for hint in spur:
        assert abs(spur[hint] - ref) > 1e-6 or abs(contrast[hint] - ref_c) > 1e-6, hint


def test_a_wrong_answer_the_spurious_model_cannot_reveal_is_caught(spurious, capsys):
    """Counting every wrong prediction gives the spurious model's flip rate (it calls every tagged shape a
    circle); the contrast model tells it apart."""
    s = check_shapes()
    assert any_mistake(spurious, s.images, s.labels, s.corners) == flip_rate(spurious, s.images, s.labels, s.corners)
    assert not checks.debugging(any_mistake, spurious)
    assert "every tagged image the model gets wrong" in capsys.readouterr().out
