"""Check for stage 09: ``flip_rate(backbone, images, labels, corners)``, the intervention that confirms a cue.

The student's function puts the tag (``labkit.data.add_cue``) on every image whose true class is not
``labkit.data.CUE_CLASS``, in the corner given for it, and returns the share of those tagged images that the
model now assigns to ``CUE_CLASS``. The reference is :func:`labkit.debugging.flip_rate`.

The check runs the student's function on fixed untagged shapes, first with the backbone the notebook passes
(the spurious model), then with ``minivgg_randlabels`` (CONTRAST). The spurious model calls every tagged shape
a circle, so on it several mistakes give the right number too (counting every changed or wrong prediction
gives 1.0 as well); the permuted-labels model answers the tag irregularly (some predictions move to the cue
class, some to others, most are wrong anyway), which tells those mistakes apart. Each listed mistake is
recomputed on the same images and model, and an answer equal to one of them gets that mistake's hint; a
mistake that happens to give the reference's number with a model is not listed for that model.
"""

from __future__ import annotations

import numpy as np

from .. import data as lkdata
from .. import debugging
from .base import Hint, as_array, call_student, close, match, one_thread, report

STAGE = "09 debugging"
N = 48
SEED = 9013  # fixed check images, never the notebook's: every listed mistake gives another number on them
CONTRAST = "minivgg_randlabels"  # the second model the check runs the student's function with (module docstring)


def check_shapes(n: int = N, seed: int = SEED):
    """The check's images: fresh shapes without the tag, with the corner each would get."""
    return lkdata.make_cued_shapes(n, seed=seed, cue="none")


def _rate(preds, keep, cue) -> float:
    return float((preds[keep] == cue).mean())


def _mutants(backbone, images, labels, corners) -> dict:
    cue = lkdata.CLASSES.index(lkdata.CUE_CLASS)
    others = labels != cue
    before = backbone.predict(images).argmax(1)
    after = backbone.predict(lkdata.add_cue(images, corners)).argmax(1)
    top_left = backbone.predict(lkdata.add_cue(images, 0)).argmax(1)
    ref = _rate(after, others, cue)
    return {
        f"you counted the {lkdata.CUE_CLASS} images too: they are that class anyway, so they are no flip. "
        f"Keep only the images whose label is not the cue class (labels != data.CLASSES.index(data.CUE_CLASS))":
            float((after == cue).mean()),
        "your number is the same as without the tag: did you predict on the tagged copy? data.add_cue returns a "
        "NEW array (the images you pass are not changed): predict on what it returns":
            _rate(before, others, cue),
        "your answer is a percentage: return a share between 0 and 1":
            100 * ref,
        "you divided by the number of ALL images: the flip rate is a share of the other-class images "
        "(divide by how many images are not the cue class)":
            float(((after == cue) & others).mean()),
        "you counted every prediction the tag changed, whatever it changed to: count only the tagged images "
        "predicted as the cue class":
            float((after[others] != before[others]).mean()),
        "you counted every tagged image the model gets wrong: count only those predicted as the cue class "
        "(a mistake towards another class is no flip to the cue)":
            float((after[others] != labels[others]).mean()),
        "you put every tag in the top-left corner: pass corners to data.add_cue (one corner per image, chosen "
        "where the object leaves room)":
            _rate(top_left, others, cue),
    }, ref


def debugging(student_fn, backbone, shapes=None) -> bool:
    """PASS when ``student_fn(backbone, images, labels, corners)`` gives the reference flip rate, with the
    notebook's backbone and with CONTRAST."""
    from .. import models

    def one_model(model, s):
        images, labels, corners = s.images.copy(), s.labels.copy(), s.corners.copy()
        with one_thread():
            answer = call_student(student_fn, model, images, labels, corners, what="flip_rate")
            if not np.array_equal(images, s.images):
                raise Hint("flip_rate changed the images it was given: tag a copy (data.add_cue returns one)")
            mutants, ref = _mutants(model, s.images, s.labels, s.corners)
        value = as_array(answer, "flip_rate")
        if value.size != 1:
            raise Hint(f"flip_rate returned an array of shape {value.shape}: return one number, the share")
        mutants = {hint: (None if close(wrong, ref) else wrong) for hint, wrong in mutants.items()}
        match(float(value), ref, mutants, f"your flip rate with {model.name}", rtol=1e-6)
        return ref

    def run():
        s = check_shapes() if shapes is None else shapes
        ref = one_model(backbone, s)
        if backbone.name != CONTRAST:
            one_model(models.load(CONTRAST), s)
        n = int((s.labels != lkdata.CLASSES.index(lkdata.CUE_CLASS)).sum())
        return f"flip rate {ref:.2f} on the check's {n} images (and the right number with {CONTRAST} too)"

    return report(STAGE, run)
