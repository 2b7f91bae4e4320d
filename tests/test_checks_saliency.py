"""The stage 03 check: it passes the notebook's solution and names each mistake it claims to catch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import labkit  # noqa: F401  (pins the Keras backend)
from labkit.attribution import class_scores
from labkit.checks.base import close
from labkit.checks.occlusion import one_thread, tiny_backbone
from labkit.checks.saliency import SCORES, _mutants, check_images, check_targets, reference_maps, saliency


def saliency_map(backbone, images, target):
    """The solution in solutions/03_saliency.ipynb (the logit as the class score)."""
    x = backbone.tensor(images).requires_grad_(True)  # the backbone is frozen: only x collects a gradient
    scores = class_scores(backbone, x, "logit")  # (N, classes)
    picked = scores[torch.arange(len(x)), torch.as_tensor(target)]  # each image's own target score
    picked.sum().backward()  # images do not interact: the sum's gradient is each image's own
    return x.grad.abs().amax(dim=-1).cpu().numpy()  # max over RGB of |gradient|


def _student(score="logit", reduce=lambda g: g.abs().amax(-1), pick=None, raw_pixels=False):
    def student(backbone, images, target):
        if raw_pixels:
            pixels = torch.tensor(np.asarray(images, np.float32), requires_grad=True)
            x = backbone.preprocess(pixels)
        else:
            x = backbone.tensor(images).requires_grad_(True)
        scores = backbone.model(x) if score == "probability" else class_scores(backbone, x, "logit")
        if pick == "predicted":
            chosen = scores.max(dim=1).values
        elif pick == "all":
            chosen = scores
        elif pick == "block":
            chosen = scores[:, torch.as_tensor(target)]  # (N, N): every image's score for every image's target
        else:
            chosen = scores[torch.arange(len(x)), torch.as_tensor(target)]
        chosen.sum().backward()
        grad = pixels.grad if raw_pixels else x.grad
        return reduce(grad)

    return student


def probability_solution(backbone, images, target):
    return _student("probability")(backbone, images, target)


def one_at_a_time(backbone, images, target):
    """Correct too: a loop over images, numpy-side reduction."""
    maps = []
    for image, t in zip(images, target):
        x = backbone.tensor(image).requires_grad_(True)
        backbone.model(x)[0, int(t)].backward()
        maps.append(np.abs(x.grad[0].numpy()).max(axis=-1))
    return np.stack(maps)


def stub(backbone, images, target):
    raise NotImplementedError("replace this line with your solution")


def no_gradient(backbone, images, target):
    return np.zeros(np.asarray(images).shape[:3])


def no_requires_grad(backbone, images, target):
    """x never asked for a gradient: the backbone is frozen, so backward finds nothing that needs one."""
    x = backbone.tensor(images)
    scores = class_scores(backbone, x, "logit")
    scores[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
    return x.grad.abs().amax(dim=-1).cpu().numpy()


MISTAKES = []
for score in SCORES:
    MISTAKES += [
        (_student(score, reduce=lambda g: g.amax(-1)), "no absolute value"),
        (_student(score, reduce=lambda g: g.amax(-1).abs()), "absolute value comes too late"),
        (_student(score, reduce=lambda g: g.abs().sum(-1)), "you summed the colour channels"),
        (_student(score, reduce=lambda g: g.sum(-1).abs()), "you summed the signed colour channels"),
        (_student(score, reduce=lambda g: g.abs().mean(-1)), "you averaged the colour channels"),
        (_student(score, reduce=lambda g: g), "(N, H, W, 3) gradient"),
        (_student(score, reduce=lambda g: g.abs()), "(N, H, W, 3) gradient"),
        (_student(score, pick="predicted"), "PREDICTED class"),
        (_student(score, pick="block"), "scores[:, target] picks"),
        (_student(score, pick="all"), "sum of every class's score" if score == "logit" else "sum to 1"),
        (_student(score, raw_pixels=True), "gradient w.r.t. the raw pixels"),
    ]
MISTAKES += [
    (_student("logit", reduce=lambda g: g.abs().amax(-1)[0]), "return one map per image"),
    (stub, "still raises NotImplementedError"),
    (no_gradient, "zero everywhere"),
    (no_requires_grad, "x = x.detach().requires_grad_(True)"),
]


def test_an_error_inside_torch_quotes_the_students_line(capsys):
    import inspect

    lines, first = inspect.getsourcelines(no_requires_grad)
    number = first + next(i for i, line in enumerate(lines) if ".backward()" in line)
    assert saliency(no_requires_grad) is False
    out = capsys.readouterr().out
    assert f"at line {number} of your code, `scores[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()`" in out, out
    assert "does not require grad" in out and "torch/" not in out


def test_solution_passes(capsys):
    assert saliency(saliency_map) is True
    out = capsys.readouterr().out
    assert out.startswith("PASS [03 saliency]") and out.count("\n") == 1
    assert "d logit / d x" in out and "reference uses" not in out


@pytest.mark.parametrize("student", [probability_solution, one_at_a_time], ids=["probability", "loop"])
def test_the_probability_passes_and_says_what_the_reference_uses(student, capsys):
    assert saliency(student) is True
    out = capsys.readouterr().out
    assert "d probability / d x" in out and "the reference uses the logit" in out


@pytest.mark.parametrize("student, hint", MISTAKES, ids=[f"{i}-{h}" for i, (_, h) in enumerate(MISTAKES)])
def test_each_mistake_gets_its_hint(student, hint, capsys):
    assert saliency(student) is False
    out = capsys.readouterr().out
    assert out.startswith("HINT [03 saliency]") and out.count("\n") == 1, out
    assert hint in out, out


def test_another_fixed_class_gets_its_hint(capsys):
    bb = tiny_backbone()
    images = check_images()
    target = check_targets(bb, images)
    other = next(c for c in range(bb.num_classes) if c not in target)

    def wrong_class(backbone, imgs, t):
        return saliency_map(backbone, imgs, np.full(len(imgs), other))

    assert saliency(wrong_class) is False
    assert f"saliency of class {other}, not of each image's target" in capsys.readouterr().out


def test_the_probability_sum_has_no_gradient():
    """Why summing every probability is caught by the 'zero everywhere' hint: sum_c p_c = 1, so its gradient is ~0."""
    from labkit.checks.saliency import _summed_gradient

    bb = tiny_backbone()
    with one_thread():
        summed = _summed_gradient(bb, check_images(), "probability")
        ref = reference_maps(bb, check_images(), check_targets(bb, check_images()))["probability"]
    assert np.abs(summed).max() < 1e-4 * ref.max()


def test_reference_and_cases_separate_every_mistake():
    """The reference equals the solution; the runner-up targets are not the predictions; no mistake equals it."""
    bb = tiny_backbone()
    images = check_images()
    target = check_targets(bb, images)
    with one_thread():
        assert np.all(target != bb.predict(images).argmax(1))
        refs = reference_maps(bb, images, target)
        np.testing.assert_allclose(saliency_map(bb, images, target), refs["logit"], rtol=1e-5, atol=1e-7)
        assert not close(refs["logit"], refs["probability"], rtol=1e-3)
        for score in SCORES:
            for hint, wrong in _mutants(bb, images, target, score).items():
                for ref in refs.values():
                    assert not close(wrong, ref, rtol=1e-3), (score, hint)


def test_weights_collect_no_gradient():
    """The backbone is frozen: backward() from the student's x leaves every weight without a .grad."""
    bb = tiny_backbone()
    saliency_map(bb, check_images(), [0, 1])
    assert all(v.value.grad is None and not v.value.requires_grad for v in bb.model.weights)


def test_check_is_fast():
    import time

    saliency(saliency_map)
    t = time.perf_counter()
    saliency(saliency_map)
    assert time.perf_counter() - t < 3.0
