"""The stage 02 check: it passes the notebook's solution and names each mistake it claims to catch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import labkit  # noqa: F401  (pins the Keras backend)
from labkit.checks.occlusion import CASES, _centred_mutants, _loop, _mutants, check_image, occlusion, one_thread, reference_map, tiny_backbone


def occlusion_map(backbone, image, target, size, stride):
    """The solution in solutions/02_occlusion.ipynb."""
    x = backbone.tensor(image)  # (1, H, W, 3), preprocessed: grey is backbone.grey here
    h, w = backbone.input_size
    rows = range(0, h - size + stride, stride)  # corners up to the first square that reaches the edge
    cols = range(0, w - size + stride, stride)
    probs = np.zeros((len(rows), len(cols)))
    with torch.no_grad():
        for r, y in enumerate(rows):
            for c, x0 in enumerate(cols):
                occluded = x.clone()
                occluded[:, y : y + size, x0 : x0 + size, :] = backbone.grey
                probs[r, c] = float(backbone.model(occluded)[0, target])
    return probs


# ----------------------------------------------------------------------------------------------------
# Mistakes, each as a student would write it


def _generic(backbone, image, target, size, stride, prepare, score, starts=None, pick=None, inplace=False,
             transpose=False):
    """The loop with pluggable mistakes: prepare(image, y, x) -> occluded preprocessed batch."""
    h, w = backbone.input_size
    rows = starts(h) if starts else range(0, h - size + 1, stride)
    cols = starts(w) if starts else range(0, w - size + 1, stride)
    out = np.zeros((len(rows), len(cols)))
    with torch.no_grad():
        x = backbone.tensor(image)
        for r, y in enumerate(rows):
            for c, x0 in enumerate(cols):
                batch = prepare(x, image, y, x0, size)
                s = score(backbone, batch)[0]
                out[r, c] = float(s.max() if pick == "top" else s[target])
    return out.T if transpose else out


def _fill_after(value):
    def prepare(x, image, y, x0, size):
        occluded = x.clone()
        occluded[:, y : y + size, x0 : x0 + size, :] = value
        return occluded

    return prepare


def _fill_pixels(value, dtype):
    def prepare(x, image, y, x0, size):
        occluded = image.astype(dtype)  # a copy
        occluded[y : y + size, x0 : x0 + size] = value
        return torch.from_numpy(occluded[None].astype(np.float32) / 127.5 - 1.0)

    return prepare


def _probs(backbone, batch):
    return backbone.model(batch)


def _logits(backbone, batch):
    from labkit.attribution import class_scores

    return class_scores(backbone, batch, "logit")


def mistake(**kw):
    def student(backbone, image, target, size, stride):
        options = dict(prepare=_fill_after(backbone.grey), score=_probs)
        options.update(kw)
        return _generic(backbone, image, target, size, stride, **options)

    return student


def pixels_float(backbone, image, target, size, stride):
    """Correct too: grey 127.5 in a float copy of the pixels, then preprocessing."""
    return _generic(backbone, image, target, size, stride, _fill_pixels(127.5, np.float32), _probs)


def batched(backbone, image, target, size, stride):
    """Correct too: every occluded copy in one batch, returned as a torch tensor."""
    x = backbone.tensor(image)
    h, w = backbone.input_size
    ys, xs = range(0, h - size + 1, stride), range(0, w - size + 1, stride)
    copies = []
    for y in ys:
        for x0 in xs:
            c = x.clone()
            c[:, y : y + size, x0 : x0 + size] = 0
            copies.append(c)
    with torch.no_grad():
        return backbone.model(torch.cat(copies))[:, target].reshape(len(ys), len(xs))


def pile_up(backbone, image, target, size, stride):
    x = backbone.tensor(image)  # never cloned: every square stays grey
    h, w = backbone.input_size
    out = []
    with torch.no_grad():
        for y in range(0, h - size + 1, stride):
            row = []
            for x0 in range(0, w - size + 1, stride):
                x[:, y : y + size, x0 : x0 + size] = 0
                row.append(float(backbone.model(x)[0, target]))
            out.append(row)
    return out


def changes_image(backbone, image, target, size, stride):
    answer = occlusion_map(backbone, image, target, size, stride)
    image[:size, :size] = 127
    return answer


def drop(backbone, image, target, size, stride):
    with torch.no_grad():
        p0 = float(backbone.model(backbone.tensor(image))[0, target])
    return p0 - occlusion_map(backbone, image, target, size, stride)


def one_image_batch(backbone, image, target, size, stride):
    return occlusion_map(backbone, image, target, size, stride)[None]


def all_classes(backbone, image, target, size, stride):
    return np.stack([occlusion_map(backbone, image, t, size, stride) for t in range(backbone.num_classes)], axis=-1)


def stub(backbone, image, target, size, stride):
    raise NotImplementedError("replace this line with your solution")


MISTAKES = [
    (mistake(prepare=_fill_pixels(0, np.uint8)), "black, not grey"),
    (mistake(prepare=_fill_after(127.5)), "127.5 after preprocessing"),
    (mistake(prepare=_fill_pixels(127.5, np.uint8)), "your grey is 127, not 127.5"),
    (mistake(prepare=_fill_pixels(128, np.uint8)), "your grey is 128"),
    (mistake(score=_logits), "logits, not probabilities"),
    (mistake(pick="top"), "own top class"),
    (mistake(transpose=True), "transposed"),
    (drop, "drop in probability"),
    (pile_up, "squares pile up"),
    (changes_image, "changed the image"),
    (one_image_batch, "the map of the one image"),
    (all_classes, "every class's probability"),
    (stub, "still raises NotImplementedError"),
]


def test_solution_passes(capsys):
    assert occlusion(occlusion_map) is True
    out = capsys.readouterr().out
    assert out.startswith("PASS [02 occlusion]") and out.count("\n") == 1


def while_it_fits(backbone, image, target, size, stride):
    """Correct too: every corner where the square fits (the same grid when stride divides H - size)."""
    return _generic(backbone, image, target, size, stride, _fill_after(backbone.grey), _probs,
                    starts=lambda n: range(0, n - size + 1, stride))


def _centred(clip):
    def student(backbone, image, target, size, stride):
        """The course's formulation: a square centred on every stride-th pixel, from pixel 0."""
        x = backbone.tensor(image)
        h, w = backbone.input_size
        half = size // 2
        out = np.zeros((len(range(0, h, stride)), len(range(0, w, stride))))
        with torch.no_grad():
            for r, cy in enumerate(range(0, h, stride)):
                for c, cx in enumerate(range(0, w, stride)):
                    occluded = x.clone()
                    y0, x0 = (max(cy - half, 0), max(cx - half, 0)) if clip else (cy - half, cx - half)
                    occluded[:, y0 : cy + half + 1, x0 : cx + half + 1, :] = backbone.grey
                    out[r, c] = float(backbone.model(occluded)[0, target])
        return out

    return student


centred, centred_unclipped = _centred(True), _centred(False)


@pytest.mark.parametrize("student", [pixels_float, batched, while_it_fits, centred],
                         ids=["pixels_float", "batched_torch", "while_it_fits", "course_centred"])
def test_other_correct_answers_pass(student, capsys):
    assert occlusion(student) is True, capsys.readouterr().out


def missed_last(backbone, image, target, size, stride):
    return _generic(backbone, image, target, size, stride, _fill_after(0.0), _probs,
                    starts=lambda n: range(0, n - size, stride))


def one_too_many(backbone, image, target, size, stride):
    return _generic(backbone, image, target, size, stride, _fill_after(0.0), _probs,
                    starts=lambda n: range(0, n, stride))


MISTAKES += [
    (missed_last, "last row and column of positions are missing"),
    (centred_unclipped, "slice with a negative start counts from the end"),
    (one_too_many, "one row and one column too many"),
]


@pytest.mark.parametrize("student, hint", MISTAKES, ids=[h or "?" for _, h in MISTAKES])
def test_each_mistake_gets_its_hint(student, hint, capsys):
    assert occlusion(student) is False
    out = capsys.readouterr().out
    assert out.startswith("HINT [02 occlusion]") and out.count("\n") == 1, out
    assert hint in out, out


def test_wrong_shape_gets_the_grid_hint(capsys):
    def half_stride(backbone, image, target, size, stride):
        return occlusion_map(backbone, image, target, size, max(1, stride // 2))

    assert occlusion(half_stride) is False
    assert "the map should be 6x6 (top-left corners 0, 5, ..., 25), or 7x7 with the course's centred" in capsys.readouterr().out


def test_reference_is_the_plain_loop_and_cases_separate_every_mistake():
    """The reference (labkit.occlusion's raw map) equals the solution's loop; no mistake equals it by accident."""
    bb = tiny_backbone()
    image = check_image()
    probs = bb.predict(image)[0]
    with one_thread():
        _separate(bb, image, probs)


def _separate(bb, image, probs):
    from labkit.checks.base import close

    for size, stride, rank in CASES:
        target = int(np.argsort(-probs)[rank])
        assert (bb.input_size[0] - size) % stride == 0  # where captum's grid is "while the square fits"
        ref = reference_map(bb, image, target, size, stride)
        np.testing.assert_allclose(ref, occlusion_map(bb, image, target, size, stride), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ref, _loop(bb, image, target, size, stride), rtol=1e-5, atol=1e-6)
        assert ref.std() > 1e-3  # the map has structure: the square matters on this net
        assert not np.allclose(ref, ref.T, rtol=1e-3)  # so a transposed map is recognisable
        centred_ref = reference_map(bb, image, target, size, stride, centred=True)
        np.testing.assert_allclose(centred_ref, centred(bb, image, target, size, stride), rtol=1e-5, atol=1e-6)
        mutants = {**_mutants(bb, image, target, size, stride, ref), **_centred_mutants(bb, image, target, size, stride)}
        for hint, wrong in mutants.items():
            assert not close(wrong, ref, rtol=1e-4) and not close(wrong, centred_ref, rtol=1e-4), hint


def test_check_is_fast():
    import time

    occlusion(occlusion_map)  # warm: the tiny backbone is built once
    t = time.perf_counter()
    occlusion(occlusion_map)
    assert time.perf_counter() - t < 3.0
