"""Checks for stage 05 (Grad-CAM): the student's split ``split_gradients(model, x, classes, layer, score)``
(:func:`gradcam_split`, below) and ``gradcam_from(activations, gradients)`` (:func:`gradcam`).

The exercise: the feature maps A and the gradients dy^c/dA of a conv layer, both (N, h, w, K) (NHWC, as
Keras lays them out), give the Grad-CAM maps (N, h, w)::

    alpha_k = mean over (i, j) of dy^c/dA^k_ij        map = ReLU(sum_k alpha_k A^k)

The reference is labkit.gradcam's (:meth:`labkit.gradcam.GradCAM.channel_weights` and
:func:`labkit.gradcam.combine`).

    ok = checks.gradcam(gradcam_from, backbone, images)

The check runs the function on small hand-made cases (two images, h, w and K all different, so that a
mean over the wrong axes gives a recognisable answer or a wrong shape). With a ``backbone`` and
``images`` it also runs it on that backbone's real activations and gradients at its last conv layer.
"""

from __future__ import annotations

import numpy as np

from .base import Hint, as_array, call_student, close, match, report, tiny_keras_cnn

STAGE = "05 Grad-CAM"
WHAT = "gradcam_from(activations, gradients)"

HINT_CHANNELS = ("your alphas were averaged over the channels (the last axis): alpha_k is one number per channel k "
                 "of each image, the mean of its gradients over the positions (i, j)")
HINT_BATCH = ("your alphas were averaged over the images too: each image has its own alphas, the mean over its own "
              "positions (i, j) only")
HINT_RELU = "your map has negative values: Grad-CAM keeps only the positive part of the weighted sum (a ReLU at the end)"
HINT_RELU_ALPHAS = ("you clipped the alphas: negative channel weights count too; the ReLU comes after the weighted sum")
HINT_MAX = ("your alphas look like the largest gradient over the positions: Grad-CAM averages the gradients over "
            "the positions (global average pooling)")
HINT_SUM = ("your map is h*w times too large: the alphas are the MEAN of the gradients over the positions, "
            "not their sum")
HINT_ACTIVATIONS = ("your channel weights come from the feature maps themselves: alpha_k is the spatial mean of the "
                    "GRADIENTS dy^c/dA^k")
HINT_WEIGHTED_GRADIENTS = ("you summed weighted gradients: the weighted sum is over the feature maps A^k, with the "
                           "alphas as the weights")
HINT_NO_POOLING = ("you multiplied each position's gradient with the activation there: Grad-CAM first averages the "
                   "gradients over the positions into one weight per channel")
HINT_NORMALISED = ("your map is rescaled (to [0, 1], or by its largest value): return the raw ReLU of the weighted "
                   "sum; normalise only when you draw it")
HINT_INPLACE = ("your function changed its input arrays in place: compute the map without modifying activations or "
                "gradients")
HINT_SHAPE = (": one map per image, one value per feature-map position (the channel axis is summed away; "
              "upsampling is for the figure)")


def reference(activations, gradients) -> np.ndarray:
    """Grad-CAM maps (N, h, w) from NHWC activations and gradients, with labkit.gradcam's own code."""
    import torch

    from .. import gradcam as lkgc

    a = torch.as_tensor(np.asarray(activations, np.float64)).permute(0, 3, 1, 2)  # labkit.gradcam is NCHW
    g = torch.as_tensor(np.asarray(gradients, np.float64)).permute(0, 3, 1, 2)
    weights = lkgc.GradCAM.channel_weights(None, a, g, None, None)
    return lkgc.combine(a, weights).numpy()


def _relu(x):
    return np.maximum(x, 0.0)


def mutants(activations, gradients) -> list[tuple[str, np.ndarray]]:
    """(hint, answer) for each mistake the check recognises, on this case."""
    a, g = np.asarray(activations, np.float64), np.asarray(gradients, np.float64)
    n, h, w, k = a.shape
    alphas = g.mean(axis=(1, 2))  # (N, K)
    weighted = np.einsum("nhwk,nk->nhw", a, alphas)
    ref = _relu(weighted)
    out = [
        (HINT_CHANNELS, _relu((a * g.mean(axis=3, keepdims=True)).sum(axis=3))),
        (HINT_RELU, weighted),
        (HINT_RELU_ALPHAS, _relu(np.einsum("nhwk,nk->nhw", a, _relu(alphas)))),
        (HINT_MAX, _relu(np.einsum("nhwk,nk->nhw", a, g.max(axis=(1, 2))))),
        (HINT_SUM, ref * (h * w)),
        (HINT_ACTIVATIONS, _relu(np.einsum("nhwk,nk->nhw", a, a.mean(axis=(1, 2))))),
        (HINT_WEIGHTED_GRADIENTS, _relu(np.einsum("nhwk,nk->nhw", g, alphas))),
        (HINT_NO_POOLING, _relu((a * g).sum(axis=3))),
    ]
    if n > 1:
        out.insert(1, (HINT_BATCH, _relu(np.einsum("nhwk,k->nhw", a, g.mean(axis=(0, 1, 2))))))
    top = ref.reshape(n, -1).max(axis=1).reshape(n, 1, 1)
    if (top > 0).all():
        out.append((HINT_NORMALISED, ref / top))  # each image's map by its own maximum
        out.append((HINT_NORMALISED, ref / ref.max()))  # the batch by its maximum
    return out


def _check_one(fn, activations, gradients, where: str = "") -> np.ndarray:
    a_in, g_in = activations.copy(), gradients.copy()
    answer = as_array(call_student(fn, a_in, g_in, what=WHAT), WHAT)
    if not (np.array_equal(a_in, activations) and np.array_equal(g_in, gradients)):
        raise Hint(HINT_INPLACE)
    ref = reference(activations, gradients)
    if close(answer, ref):
        return answer
    for hint, wrong in mutants(activations, gradients):
        if close(answer, wrong):
            raise Hint(hint)
    match(answer, ref, {}, f"{WHAT}{where}", shape_hint=HINT_SHAPE)  # the generic shape / difference hint
    return answer


def _cases():
    """Hand-made cases: post-ReLU activations (>= 0, some zeros), signed gradients, h, w, K all different.

    The gradients get a per-channel offset so that the alphas are clearly signed (some channels raise
    the score, some lower it) and the weighted sum has both signs: the ReLU then matters.
    """
    rng = np.random.default_rng(5)
    out = []
    for n, h, w, k in ((2, 3, 4, 5), (1, 5, 2, 3)):
        a = np.maximum(rng.normal(0.3, 1.0, size=(n, h, w, k)), 0.0)
        offsets = np.stack([rng.permutation(np.linspace(-1.0, 1.0, k)) for _ in range(n)])  # both signs, every image
        g = rng.normal(0.0, 0.5, size=(n, h, w, k)) + offsets[:, None, None, :]
        out.append((a, g))
    return out


def _activations_and_gradients(backbone, images, layer=None):
    """A and dy^c/dA (N, h, w, K) at ``layer`` for each image's predicted class, via labkit.gradcam's split."""
    from .. import gradcam as lkgc
    from ..attribution import resolve_targets

    split = lkgc.GradCAM(backbone, layer)
    acts, scores = split.forward(backbone.tensor(images))  # NCHW leaf A, and the logits computed from it
    grads = split.backward(acts, scores, resolve_targets(None, scores.detach()))
    return tuple(t.detach().permute(0, 2, 3, 1).double().cpu().numpy() for t in (acts, grads))


def gradcam(gradcam_from, backbone=None, images=None) -> bool:
    """Stage 05: ``gradcam_from(activations (N, h, w, K), gradients (N, h, w, K)) -> (N, h, w)``.

    ``backbone`` (a :class:`labkit.models.Backbone`) and ``images`` (RGB at its size) are optional: with
    them the function also runs on the real activations and gradients of the backbone's last conv layer
    (for each image's predicted class) and must give labkit.gradcam's maps.
    """
    from ..models import Backbone

    if backbone is not None and not isinstance(backbone, Backbone):
        raise TypeError(f"checks.gradcam takes a labkit Backbone (models.load), got {type(backbone).__name__}")
    if (backbone is None) != (images is None):
        raise TypeError("checks.gradcam needs both backbone and images, or neither")

    def run() -> str:
        for a, g in _cases():
            _check_one(gradcam_from, a, g)
        if backbone is None:
            return "alphas from the mean gradients, ReLU of the weighted sum, on small test cases"
        a, g = _activations_and_gradients(backbone, backbone.check_images(np.asarray(images)))
        layer = backbone.last_conv_layer
        _check_one(gradcam_from, a, g, where=f" on {backbone.name}'s {layer}")
        n, h, w, k = a.shape
        return (f"alphas from the mean gradients, ReLU of the weighted sum; on {backbone.name}'s {layer} "
                f"({n} image(s), {h}x{w}, K={k}) it gives labkit.gradcam's maps")

    return report(STAGE, run)


# -- the split exercise: A and dy^c/dA from modelA / modelP, built with the Keras functional API ----------------

SPLIT_STAGE = "05 Grad-CAM split"
SPLIT_WHAT = "split_gradients(model, x, classes, layer, score)"

HINT_GRAD_NONE = (
    "the gradient came back as None. The check also runs your function on a model that is NOT frozen: Keras 3 "
    "on torch keeps every weight as a torch Parameter, which requires grad unless the model is frozen "
    "(trainable = False), so modelA(x) is then the end of a graph, not a leaf, and requires_grad_ does not make "
    "it one; torch fills .grad only for leaves. Make featureMaps a leaf: compute it under torch.no_grad() (or "
    "detach it) before requires_grad_(True)")
HINT_NOT_A_PAIR = "return two things, (featureMaps, gradients): the feature maps A and dy^c/dA, both (N, h, w, K)"
HINT_CONV_TWICE = ("your head applies {layer} again: modelA already ends with {layer}'s output, so modelP starts "
                   "at the next layer ({next}), whose input is that output")
HINT_POOL_SKIPPED = ("your head skips {next}: modelP must start AT {next} (its input is {layer}'s output), so that "
                     "the pooling runs exactly once")
HINT_POOL_TWICE = ("{next} runs twice: modelA ends at {layer}'s output (before the pooling), and modelP starts "
                   "with {next}")
HINT_A_LAYER = ("your feature maps have the shape of {other}'s output {shape}: A is {layer}'s output "
                "(modelA = keras.Model(model.inputs, model.get_layer(layer).output))")
HINT_PROBABILITY = ("your gradients are those of the class PROBABILITY (after the softmax), but score='logit' asked "
                    "for the logit: take the last Dense layer's output before its softmax activation")
HINT_LOGIT = ("your gradients are those of the LOGIT, but score='probability' asked for the softmax output, as "
              "in the course's probas = modelP(featureMaps)")
HINT_FIRST_ONLY = ("only the first image got a gradient: sum each image's OWN class score, "
                   "scores[i, classes[i]] for every i, before backward")
HINT_ONE_CLASS = ("every image got the gradient of the same class (classes[0]): image i's score is "
                  "scores[i, classes[i]]")
HINT_ALL_LISTED = ("each image got the gradient of the sum of ALL the listed classes: scores[:, classes] is an N x N "
                   "block; take scores[i, classes[i]] (e.g. scores[torch.arange(N), classes])")
HINT_ALL_CLASSES = "you summed every class's score: back-propagate only scores[i, classes[i]] of each image"
HINT_MEAN_IMAGES = ("your gradients are N times too small: you averaged the scores over the images; SUM them (each "
                    "image's gradient is then its own score's gradient)")
HINT_WRT_INPUT = ("your gradient has the input's shape: it is d score / d x. Grad-CAM needs d score / d featureMaps "
                  "(featureMaps.grad)")
HINT_WRT_LAYER = "your gradient has the shape of {other}'s output {shape}: take it w.r.t. featureMaps, {layer}'s output"
HINT_SWAPPED = "you returned (gradients, featureMaps): return (featureMaps, gradients), in that order"
HINT_A_AS_GRAD = "your gradient equals the feature maps themselves: return featureMaps.grad after backward"


def _head_chain(model, layer):
    """(conv layer, its index, the layers after it): the split of a plain chain of layers (VGG-like)."""
    conv = model.get_layer(layer)
    i = model.layers.index(conv)
    return conv, i, list(model.layers[i + 1 :])


def split_reference(model, x, classes, layer, score="logit", *, a_layer=None, head=None, select="each", wrt=None):
    """A and dy^c/dA (N, h, w, K) as numpy float64 for a Keras chain model, with labkit.gradcam's head code.

    The keyword arguments build the mistakes the check recognises (the defaults give the right answer):
    ``a_layer`` the layer whose output is taken as A, ``head`` the layers applied to A, ``select`` how the
    images' scores are combined ("each", "first", "one class", "all listed", "all classes", "mean"),
    ``wrt`` "input" for d score / d x.
    """
    import keras
    import torch

    from .. import gradcam as lkgc

    conv, i, after = _head_chain(model, layer)
    a_layer = conv if a_layer is None else model.get_layer(a_layer)
    head = after if head is None else head
    classes = torch.as_tensor(np.asarray(classes), dtype=torch.long)
    n = len(classes)
    with torch.enable_grad():
        if wrt == "input":
            x = x.detach().clone().requires_grad_(True)
            leaf = x
            feats = keras.Model(model.inputs, a_layer.output)(x)
        else:
            with torch.no_grad():
                feats = keras.Model(model.inputs, a_layer.output)(x)
            feats = feats.detach().requires_grad_(True)
            leaf = feats
        scores = lkgc._keras_head(head[:-1], head[-1], feats, score)
        rows = torch.arange(n)
        chosen = {
            "each": lambda: scores[rows, classes].sum(),
            "first": lambda: scores[0, classes[0]],
            "one class": lambda: scores[:, classes[0]].sum(),
            "all listed": lambda: scores[:, classes].sum(),
            "all classes": lambda: scores.sum(),
            "mean": lambda: scores[rows, classes].mean(),
        }[select]()
        (grad,) = torch.autograd.grad(chosen, leaf)
    f = lambda t: t.detach().double().cpu().numpy()
    return f(feats), f(grad)


def _near(answer, ref) -> bool:
    """Equal up to float32 round-off, relative to the reference's own scale (probability gradients are tiny)."""
    answer, ref = np.asarray(answer, np.float64), np.asarray(ref, np.float64)
    if answer.shape != ref.shape:
        return False
    scale = float(np.abs(ref).max(initial=0.0))
    return bool(np.allclose(answer, ref, rtol=1e-3, atol=1e-4 * scale + 1e-30))


def _batch_free(msg: str) -> str:
    """An error message with the batch size taken out of every shape, so that symbolic and eager runs compare."""
    import re

    return re.sub(r"\((None|\d+), ", "(*, ", msg)


def _split_mutants(model, x, classes, layer, score):
    """(hint, (A, dA) or the error message that mistake raises) for the mistakes the check recognises here."""
    conv, i, after = _head_chain(model, layer)
    nxt = after[0].name
    fmt = dict(layer=layer, next=nxt)
    other = "probability" if score == "logit" else "logit"
    out = []

    def add(hint, **kw):
        try:
            out.append((hint, split_reference(model, x, classes, layer, kw.pop("score", score), **kw)))
        except Exception as exc:  # noqa: BLE001 - a structural mistake that Keras refuses: keep its message
            out.append((hint, _batch_free(str(exc))))

    add(HINT_PROBABILITY if score == "logit" else HINT_LOGIT, score=other)
    add(HINT_CONV_TWICE.format(**fmt), head=[conv] + after)
    add(HINT_POOL_SKIPPED.format(**fmt), head=after[1:])
    add(HINT_POOL_TWICE.format(**fmt), head=[after[0]] + after)
    if len(classes) > 1:
        for select, hint in (("first", HINT_FIRST_ONLY), ("one class", HINT_ONE_CLASS),
                             ("all listed", HINT_ALL_LISTED), ("all classes", HINT_ALL_CLASSES),
                             ("mean", HINT_MEAN_IMAGES)):
            add(hint, select=select)
    else:
        add(HINT_ALL_CLASSES, select="all classes")
    return out


def _output_shapes(model, x):
    """{layer name: output shape for this batch} for every layer, and the input's shape under 'the input'."""
    n = x.shape[0]
    shapes = {"the input": tuple(x.shape)}
    for l in model.layers[1:]:
        shapes[l.name] = (n, *tuple(l.output.shape[1:]))
    return shapes


def _split_one(fn, model, x, classes, layer, score, where=""):
    """Run the student's split on one model and case; raise the recognised mistake's hint."""
    import warnings

    ref_a, ref_g = split_reference(model, x, classes, layer, score)
    try:
        with warnings.catch_warnings():  # torch warns when .grad of a non-leaf is read: the hint says it better
            warnings.simplefilter("ignore", UserWarning)
            got = call_student(fn, model, x.clone(), np.asarray(classes).copy(), layer, score, what=SPLIT_WHAT)
    except Hint as hint:
        message = _batch_free(str(hint))
        for mhint, answer in _split_mutants(model, x, classes, layer, score):
            if isinstance(answer, str) and answer in message:
                raise Hint(mhint) from None
        raise
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Hint(HINT_NOT_A_PAIR)
    a_raw, g_raw = got
    if a_raw is None:
        raise Hint(HINT_NOT_A_PAIR)
    if g_raw is None:
        raise Hint(HINT_GRAD_NONE)
    a, g = as_array(a_raw, SPLIT_WHAT), as_array(g_raw, SPLIT_WHAT)
    shapes = _output_shapes(model, x)
    if a.shape != ref_a.shape:
        if _near(a, ref_g) and _near(g, ref_a):
            raise Hint(HINT_SWAPPED)
        for name, shape in shapes.items():
            if name != layer and a.shape == shape:
                raise Hint(HINT_A_LAYER.format(other=name, shape=shape, layer=layer))
        raise Hint(f"{SPLIT_WHAT}{where}: featureMaps has shape {a.shape}, expected {ref_a.shape} ({layer}'s output)")
    if not _near(a, ref_a):
        if _near(a, ref_g) and _near(g, ref_a):
            raise Hint(HINT_SWAPPED)
        raise Hint(f"{SPLIT_WHAT}{where}: featureMaps is not {layer}'s output for x: run modelA on x as it is")
    if g.shape != ref_g.shape:
        if g.shape == tuple(x.shape):
            raise Hint(HINT_WRT_INPUT)
        for name, shape in shapes.items():
            if name != layer and g.shape == shape:
                raise Hint(HINT_WRT_LAYER.format(other=name, shape=shape, layer=layer))
        raise Hint(f"{SPLIT_WHAT}{where}: the gradient has shape {g.shape}, expected {ref_g.shape} (like featureMaps)")
    if _near(g, ref_g):
        return a, g
    if _near(g, ref_a):
        raise Hint(HINT_A_AS_GRAD)
    for hint, answer in _split_mutants(model, x, classes, layer, score):
        if not isinstance(answer, str) and _near(g, answer[1]):
            raise Hint(hint)
    err = np.abs(g - ref_g).max() / max(float(np.abs(ref_g).max()), 1e-30)
    raise Hint(f"{SPLIT_WHAT}{where} ({score}): the gradient differs from dy^c/dA (largest difference {err:.2g} of "
               "its largest value): re-read the steps in the text above")


def _tiny_models():
    """(frozen, unfrozen) copies of the checks' tiny Keras CNN: the course's setting, and the torch-leaf trap."""
    import keras

    import warnings

    base = tiny_keras_cnn()
    out = []
    with warnings.catch_warnings():  # Keras' numpy-2 copy warning on get/set_weights: noise, not the student's
        warnings.simplefilter("ignore", DeprecationWarning)
        for trainable in (False, True):  # fresh copies each run: a student's function may (un)freeze its model
            m = keras.models.clone_model(base)
            m.set_weights(base.get_weights())
            m.trainable = trainable
            out.append(m)
    return out


def gradcam_split(split_gradients, backbone=None, images=None) -> bool:
    """Stage 05: ``split_gradients(model, x, classes, layer, score) -> (featureMaps, gradients)``.

    ``model`` a Keras model that is a plain chain of layers (VGG-like), ``x`` a preprocessed batch
    (N, H, W, 3) torch tensor, ``classes`` N class indices, ``layer`` a conv layer's name, ``score``
    "logit" or "probability". Both returned arrays are (N, h, w, K): ``layer``'s output A and dy^c/dA.

    The check calls the function on its own small Keras CNN (frozen, then NOT frozen: the gradient must
    still come back), for both scores, and, with ``backbone`` and ``images``, on the backbone's model at its
    last conv layer, where it must give what labkit.gradcam computes.
    """
    import torch

    from ..models import Backbone

    if backbone is not None and not isinstance(backbone, Backbone):
        raise TypeError(f"checks.gradcam_split takes a labkit Backbone (models.load), got {type(backbone).__name__}")
    if (backbone is None) != (images is None):
        raise TypeError("checks.gradcam_split needs both backbone and images, or neither")

    def run() -> str:
        frozen, unfrozen = _tiny_models()
        rng = np.random.default_rng(11)
        x = torch.as_tensor(rng.normal(size=(3, *frozen.input_shape[1:])).astype(np.float32))
        classes = np.array([1, 3, 0])
        for score in ("logit", "probability"):
            _split_one(split_gradients, frozen, x, classes, "conv2", score, where=" on the check's small CNN")
        _split_one(split_gradients, unfrozen, x, classes, "conv2", "logit", where=" on a small CNN that is not frozen")
        if backbone is None:
            return "modelA / modelP split, dy^c/dA for the logit and the probability, on small Keras CNNs"
        xb = backbone.tensor(backbone.check_images(np.asarray(images)))
        layer = backbone.last_conv_layer
        for score in ("logit", "probability"):
            cls = backbone.model(xb).argmax(dim=1).cpu().numpy()
            a, g = _split_one(split_gradients, backbone.model, xb, cls, layer, score,
                              where=f" on {backbone.name}'s {layer}")
            # the reference of record: labkit.gradcam's own split gives the same A and dy^c/dA
            from .. import gradcam as lkgc

            ra, rg, _ = lkgc.activations_and_gradients(backbone, np.asarray(images), target=cls, layer=layer,
                                                       score=score)
            if not (_near(a, ra) and _near(g, rg)):
                raise Hint(f"{SPLIT_WHAT} on {backbone.name}'s {layer} ({score}) differs from labkit.gradcam's split")
        n, h, w, k = a.shape
        return (f"modelA / modelP split, dy^c/dA for the logit and the probability; on {backbone.name}'s {layer} "
                f"({n} image(s), {h}x{w}, K={k}) it gives labkit.gradcam's A and gradients")

    return report(SPLIT_STAGE, run)
