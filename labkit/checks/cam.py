"""Checks for stage 04 (CAM): the student's ``build_cam_model(model, layer, num_classes)`` and trained model
(:func:`cam_head`, below) and ``class_activation_map(feature_maps, weights, c)`` (:func:`cam`).

The exercise: feature maps M (h, w, K) of one image, the CAM head's Dense kernel W (K, C) and a class c
give the class activation map ``CAM_c = sum_k W[k, c] M_k``, (h, w), no bias, no ReLU, no normalisation.
The reference is :func:`labkit.cam.class_activation_map`.

    ok = checks.cam(class_activation_map, head, image)

The check runs the function on small hand-made cases first: a square kernel (K == C, so that taking
row c instead of column c gives an answer of the right shape, which can then be recognised), then a
non-square one. With a trained ``head`` and one ``image`` it also runs it on that backbone's real
feature maps, for every class of the head.
"""

from __future__ import annotations

import numpy as np

from .base import Hint, as_array, call_student, close, match, report

STAGE = "04 CAM"
WHAT = "class_activation_map(feature_maps, weights, c)"

HINT_RELU = ("your map has no negative values, but the weighted sum has some: CAM keeps the negative evidence "
             "(no ReLU, no clipping)")
HINT_BIAS = ("your map is off by the same constant at every position: the bias belongs to the head's logit, "
             "not to the map (leave it out)")
HINT_MEAN = ("your map is K times too small (K = the number of feature maps): CAM sums the weighted feature maps "
             "over k, it does not average them")
HINT_ROW = ("you took class c's weights from row c of the kernel: weights is (K, C), one row per feature map and "
            "one column per class")
HINT_ALL = ("your map combines the weights of every class (it is the same whatever c is): use only the weights "
            "of class c")
HINT_NORMALISED = ("your map is rescaled (to [0, 1], or by its largest value): CAM is the raw weighted sum; "
                   "normalise only when you draw it")
HINT_INPLACE = "your function changed its input arrays in place: compute the map without modifying feature_maps or weights"
NOTE_OWN_ARRAYS = ("The check calls your function on its own small arrays (other shapes than the notebook's): "
                   "compute from the arguments feature_maps, weights and c, not from the notebook's variables")
HINT_SHAPE = ": one value per feature-map position (upsampling to the image size is for the figure, not for this function)"


def reference(feature_maps: np.ndarray, weights: np.ndarray, c: int) -> np.ndarray:
    """The CAM of class c for one image: labkit.cam's weighted sum, (h, w, K) and (K, C) -> (h, w)."""
    from .. import cam as lkcam

    fm = np.asarray(feature_maps, np.float64)
    return lkcam.class_activation_map(fm[None], np.asarray(weights, np.float64)[:, c][None])[0]


def mutants(feature_maps: np.ndarray, weights: np.ndarray, c: int, bias=None) -> list[tuple[str, np.ndarray]]:
    """(hint, answer) for each mistake the check recognises and that is detectable on this case."""
    fm, w = np.asarray(feature_maps, np.float64), np.asarray(weights, np.float64)
    k, n_classes = w.shape
    ref = fm @ w[:, c]
    out = []
    if ref.min() < 0:
        out.append((HINT_RELU, np.maximum(ref, 0.0)))
    if bias is not None:
        out.append((HINT_BIAS, ref + float(np.asarray(bias)[c])))
    if k > 1:
        out.append((HINT_MEAN, ref / k))
    if k == n_classes:
        out.append((HINT_ROW, fm @ w[c, :]))
    if n_classes > 1:
        out.append((HINT_ALL, fm @ w.sum(axis=1)))
    lo, hi, top = ref.min(), ref.max(), np.abs(ref).max()
    if hi > lo:
        out.append((HINT_NORMALISED, (ref - lo) / (hi - lo)))
    if top > 0:
        out.append((HINT_NORMALISED, ref / top))
    return out


def _check_one(fn, feature_maps, weights, c, bias=None, where: str = "") -> np.ndarray:
    fm_in, w_in = feature_maps.copy(), weights.copy()
    try:
        answer = as_array(call_student(fn, fm_in, w_in, c, what=WHAT), WHAT)
    except Hint as hint:
        if " raised " in str(hint):  # e.g. numpy's matmul message when the function uses the notebook's globals
            raise Hint(f"{hint}. {NOTE_OWN_ARRAYS}") from None
        raise
    if not (np.array_equal(fm_in, feature_maps) and np.array_equal(w_in, weights)):
        raise Hint(HINT_INPLACE)
    ref = reference(feature_maps, weights, c)
    if close(answer, ref):
        return answer
    for hint, wrong in mutants(feature_maps, weights, c, bias):
        if close(answer, wrong):
            raise Hint(hint)
    if answer.shape == ref.shape:
        # off by one constant everywhere: a bias, wherever the student found one
        diff = answer - ref
        if np.ptp(diff) <= 1e-4 * max(1.0, float(np.abs(ref).max())):
            raise Hint(HINT_BIAS)
    match(answer, ref, {}, f"{WHAT}{where}", shape_hint=HINT_SHAPE)  # the generic shape / difference hint
    return answer


def _cases():
    """Small hand-made cases: post-ReLU feature maps (>= 0, some zeros) and signed weights."""
    rng = np.random.default_rng(4)
    out = []
    for h, w, k, n_classes in ((3, 4, 5, 5), (4, 3, 7, 3)):  # square kernel first: row c vs column c is visible
        fm = np.maximum(rng.normal(0.3, 1.0, size=(h, w, k)), 0.0)
        weights = rng.normal(0.0, 1.0, size=(k, n_classes))
        out.append((fm, weights))
    return out


def _feature_maps(head, image) -> np.ndarray:
    """The (h, w, K) feature maps of ``head.layer`` for one RGB image."""
    import keras
    import torch

    bb = head.backbone
    image = np.asarray(image)
    if image.ndim == 4:
        image = image[0]
    bb.check_images(image)
    sub = keras.Model(bb.model.inputs[0], bb.layer(head.layer).output)
    with torch.no_grad():
        return sub(bb.tensor(image[None]))[0].float().cpu().numpy().astype(np.float64)


def cam(class_activation_map, head=None, image=None) -> bool:
    """Stage 04: ``class_activation_map(feature_maps (h, w, K), weights (K, C), c) -> (h, w)``.

    ``head`` (a :class:`labkit.cam.CAMHead`) and ``image`` (one RGB image at the backbone's size) are
    optional: with them the function is also run on that head's real feature maps, for every class.
    """
    from .. import cam as lkcam

    if head is not None and not isinstance(head, lkcam.CAMHead):
        raise TypeError(f"checks.cam takes a CAMHead from cam.train_cam_head as head, got {type(head).__name__}")
    if (head is None) != (image is None):
        raise TypeError("checks.cam needs both head and image, or neither")

    def run() -> str:
        for fm, weights in _cases():
            for c in range(weights.shape[1]):
                _check_one(class_activation_map, fm, weights, c)
        if head is None:
            return "the weighted sum of class c's feature maps, on small test cases"
        fm = _feature_maps(head, image)
        weights = head.weights.astype(np.float64)
        for c in range(head.num_classes):
            _check_one(class_activation_map, fm, weights, c, bias=head.bias,
                       where=f" on {head.backbone.name}'s {head.layer} maps, class {head.class_names[c]!r},")
        h, w, k = fm.shape
        return (f"the weighted sum of class c's feature maps; on {head.backbone.name}'s {head.layer} maps "
                f"({h}x{w}, K={k}) it gives the head's CAM for all {head.num_classes} classes")

    return report(STAGE, run)


# -- the head exercise: GAP -> Dense softmax on a frozen base, built and trained in Keras ----------------------

HEAD_STAGE = "04 CAM head"
HEAD_WHAT = "build_cam_model(model, layer, num_classes)"

HINT_NOT_MODEL = "return the Keras model you built (keras.Model(model.inputs, probabilities)), compiled"
HINT_NOT_FROZEN = ("the base is not frozen: {n} of your model's trainable weights belong to the conv layers. The "
                   "check calls your function on a model that is NOT frozen: set trainable = False on the base "
                   "(e.g. base.trainable = False) so that only the new Dense layer learns")
HINT_FLATTEN = ("your Dense layer takes {k_in} inputs, the {h}x{w}x{k} feature maps flattened: CAM's head pools each "
                "feature map to ONE number (keras.layers.GlobalAveragePooling2D) before the Dense layer")
HINT_ONE_DENSE = ("your head has {n} Dense layers: CAM's head is global average pooling and ONE Dense softmax "
                  "layer, so that its kernel weighs the feature maps directly")
HINT_ACTIVATION = ("your Dense layer's activation is {act}: CAM's head ends in a softmax over the classes "
                   "(activation='softmax'), trained with the cross-entropy")
HINT_MAX_POOL = ("your head takes each feature map's MAXIMUM: CAM averages it (GlobalAveragePooling2D), which is "
                 "what lets the map be read off the weights")
HINT_WRONG_LAYER = "your head sits on {other}'s output: put it on {layer}'s output (model.get_layer(layer).output)"
HINT_NOT_COMPILED = ("your model is not compiled: compile it (an optimizer such as Adam, the loss "
                     "'sparse_categorical_crossentropy' for integer labels, metrics=['accuracy']) before fit")
HINT_NUM_CLASSES = "your model outputs {got} scores per image: the Dense layer needs num_classes ({want}) units"
HINT_ACCURACY = ("your trained head is right on {acc:.2f} of the test images, labkit's head on the same features "
                 "{ref:.2f}: train it more (epochs, learning rate) on backbone.preprocess(images) with integer labels")
HINT_NOT_TRAINED = "cam_model is None: run the exercise cell (build, compile and fit) first"


def _np(variable) -> np.ndarray:
    from .. import cam as lkcam

    return lkcam._numpy(variable).astype(np.float64)


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _head_structure(fn_model, model, layer, num_classes, x) -> None:
    """Raise the hint of the first structural mistake of the student's CAM model built on ``model`` at ``layer``."""
    import keras
    import torch

    if not isinstance(fn_model, keras.Model):
        raise Hint(HINT_NOT_MODEL)
    own = {id(l) for l in model.layers}
    added_dense = [l for l in fn_model.layers if isinstance(l, keras.layers.Dense) and id(l) not in own]
    if not added_dense:
        raise Hint(HINT_NOT_MODEL + ": it has no new Dense layer")
    dense = added_dense[-1]
    new_weights = [v for l in fn_model.layers if id(l) not in own for v in l.weights]  # the head's own
    base_trainable = [w for w in fn_model.trainable_weights if not any(w is v for v in new_weights)]
    if base_trainable:
        raise Hint(HINT_NOT_FROZEN.format(n=len(base_trainable)))
    if len(added_dense) > 1:
        raise Hint(HINT_ONE_DENSE.format(n=len(added_dense)))
    kernel, bias = _np(dense.kernel), _np(dense.bias)
    if kernel.shape[1] != num_classes:
        raise Hint(HINT_NUM_CLASSES.format(got=kernel.shape[1], want=num_classes))
    maps = {}  # every conv or pooling layer's output for x: where a head could sit
    with torch.no_grad():
        for l in model.layers:
            if isinstance(l, (keras.layers.Conv2D, keras.layers.MaxPooling2D)):
                maps[l.name] = keras.Model(model.inputs, l.output)(x).double().cpu().numpy()
        got = keras.ops.convert_to_numpy(fn_model(x)).astype(np.float64)
    for name, m in maps.items():
        n, h, w, k = m.shape
        if kernel.shape[0] == h * w * k and kernel.shape[0] != k:
            raise Hint(HINT_FLATTEN.format(k_in=kernel.shape[0], h=h, w=w, k=k))
    acts = {"softmax": _softmax, "linear (none)": lambda z: z, "relu": lambda z: np.maximum(z, 0),
            "sigmoid": lambda z: 1 / (1 + np.exp(-z))}
    right = [name for name in maps if name == layer]
    order = right + [name for name in maps if name != layer]  # the asked layer first
    for name in order:
        m = maps[name]
        if m.shape[-1] != kernel.shape[0]:
            continue
        for pool, pooled in (("avg", m.mean(axis=(1, 2))), ("max", m.max(axis=(1, 2)))):
            z = pooled @ kernel + bias
            for act, f in acts.items():
                if got.shape == z.shape and np.allclose(got, f(z), rtol=1e-3, atol=1e-5):
                    if name != layer:
                        raise Hint(HINT_WRONG_LAYER.format(other=name, layer=layer))
                    if pool == "max":
                        raise Hint(HINT_MAX_POOL)
                    if act != "softmax":
                        raise Hint(HINT_ACTIVATION.format(act=act))
                    if getattr(fn_model, "optimizer", None) is None or not getattr(fn_model, "compiled", True):
                        raise Hint(HINT_NOT_COMPILED)
                    return
    raise Hint(f"{HEAD_WHAT}'s output is not softmax(GAP({layer}) @ W + b) with its own Dense layer's weights: "
               "re-read the recipe in the text above")


def cam_head(build_cam_model, cam_model=None, head=None, images=None, labels=None) -> bool:
    """Stage 04: ``build_cam_model(model, layer, num_classes) -> compiled keras.Model`` and the trained ``cam_model``.

    The check first calls the function on its own small Keras CNN, NOT frozen (layer "conv2", 3 classes), and
    reads the built model: frozen base, global average pooling, one Dense softmax layer, on that layer,
    compiled. With ``cam_model`` (the student's trained model), ``head`` (labkit's reference CAMHead trained on
    the same data) and test ``images``/``labels`` it checks the same structure on the backbone and that the
    accuracy on the test images is within 0.1 of the reference head's (judged from 20 test images on).
    """
    import warnings

    import keras
    import torch

    from .. import cam as lkcam
    from .base import tiny_keras_cnn

    if head is not None and not isinstance(head, lkcam.CAMHead):
        raise TypeError(f"checks.cam_head takes labkit's CAMHead (cam.train_cam_head) as head, got {type(head).__name__}")
    if (head is None) != (images is None) or (images is None) != (labels is None):
        raise TypeError("checks.cam_head needs head, images and labels together, or none of them")

    def run() -> str:
        base = tiny_keras_cnn()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tiny = keras.models.clone_model(base)  # a fresh, unfrozen copy: the student's function may freeze it
            tiny.set_weights(base.get_weights())
        tiny.trainable = True
        x = torch.as_tensor(np.random.default_rng(3).normal(size=(4, *tiny.input_shape[1:])).astype(np.float32))
        built = call_student(build_cam_model, tiny, "conv2", 3, what=HEAD_WHAT)
        _head_structure(built, tiny, "conv2", 3, x)
        if head is None:
            return "frozen base, global average pooling, one Dense softmax layer on the asked layer, on a small CNN"
        if cam_model is None:
            raise Hint(HINT_NOT_TRAINED)
        bb = head.backbone
        imgs = bb.check_images(np.asarray(images))
        _head_structure(cam_model, bb.model, head.layer, head.num_classes, bb.tensor(imgs[:2]))
        with torch.no_grad():
            probs = np.concatenate([keras.ops.convert_to_numpy(cam_model(bb.tensor(imgs[s : s + 50])))
                                    for s in range(0, len(imgs), 50)])
        acc = float((probs.argmax(axis=1) == np.asarray(labels)).mean())
        ref = float((head.predict(imgs).argmax(axis=1) == np.asarray(labels)).mean())
        what = f"frozen base, GAP, one Dense softmax layer on {bb.name}'s {head.layer}"
        if len(imgs) < 20:
            return f"{what}; its accuracy is not judged on {len(imgs)} test images (too few)"
        if acc < ref - 0.1:
            raise Hint(HINT_ACCURACY.format(acc=acc, ref=ref))
        # no numbers in the PASS line: it is compared under nbval, and the last digit may move with the threads
        return f"{what}; on {len(imgs)} test images it is within 0.1 of labkit's head's accuracy"

    return report(HEAD_STAGE, run)
