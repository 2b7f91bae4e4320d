"""Check for stage 07: Keras kernels in torch's layout, and the flatten-order trap of the first Dense layer.

    ok = labkit.checks.keras_to_torch(conv_kernel_to_torch, dense_kernel_to_torch, fc1_to_torch)
    twin = labkit.checks.copy_weights(twin, backbone, conv_kernel_to_torch, dense_kernel_to_torch, fc1_to_torch)

The three functions take and return numpy arrays:

* ``conv_kernel_to_torch(kernel)``: Keras' (kh, kw, in, out) to torch's (out, in, kh, kw);
* ``dense_kernel_to_torch(kernel)``: Keras' (in, out) to nn.Linear's (out, in);
* ``fc1_to_torch(kernel, h, w, c)``: the Dense layer right after Flatten, whose (h*w*c, out) rows are in
  Keras' NHWC flatten order, to nn.Linear's (out, c*h*w) columns in torch's NCHW flatten order.

The check feeds them kernels whose every axis has its own length (a non-square conv kernel, h != w), so
that each wrong order of axes gives its own recognisable answer, then copies them into the twin of a tiny
Keras CNN and compares the two networks' outputs.
"""

from __future__ import annotations

import numpy as np

from .base import Hint, as_array, call_student, match, one_thread, report, tiny_keras_cnn

STAGE = "07 keras to torch"


def _kernels():
    rng = np.random.default_rng(7)
    conv = rng.normal(size=(3, 2, 4, 5)).astype(np.float32)  # kh, kw, in, out: every axis its own length
    square = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)  # the usual case, where OIWH has the right shape
    dense = rng.normal(size=(7, 5)).astype(np.float32)
    h, w, c, out = 2, 3, 4, 5
    fc1 = rng.normal(size=(h * w * c, out)).astype(np.float32)
    return conv, square, dense, (fc1, h, w, c)


# ----------------------------------------------------------------------------------------------------
# The three conversions


def _answer(fn, what, *args):
    value = call_student(fn, *(a.copy() if isinstance(a, np.ndarray) else a for a in args), what=what)
    return as_array(value, what)


def _conv_mutants(k: np.ndarray) -> dict:
    kh, kw, i, o = k.shape
    return {
        "conv_kernel_to_torch returns (out, in, kw, kh): the kernel is transposed in space (kernel.T reverses all "
        "four axes); torch wants (out, in, kh, kw)": k.transpose(3, 2, 1, 0),
        "conv_kernel_to_torch swaps in and out: nn.Conv2d's weight is (out, in, kh, kw)": k.transpose(2, 3, 0, 1),
        "conv_kernel_to_torch returns (in, out, kw, kh): in and out swapped, and the kernel transposed in space":
            k.transpose(2, 3, 1, 0),
        "conv_kernel_to_torch reshapes: a reshape keeps the numbers in Keras' order and only relabels the axes; "
        "move the axes with a transpose (np.transpose(kernel, axes))": k.reshape(o, i, kh, kw),
        "conv_kernel_to_torch flips the kernel in space: Keras and torch both compute cross-correlation, there is "
        "nothing to flip": k[::-1, ::-1].transpose(3, 2, 0, 1),
        "conv_kernel_to_torch returns the kernel in Keras' layout (kh, kw, in, out)": k,
    }


def _check_conv(fn, conv, square) -> None:
    for kernel in (conv, square):
        answer = _answer(fn, "conv_kernel_to_torch", kernel)
        match(answer, kernel.transpose(3, 2, 0, 1), _conv_mutants(kernel), "conv_kernel_to_torch(kernel)",
              shape_hint=" (out, in, kh, kw)")


def _check_dense(fn, dense) -> None:
    answer = _answer(fn, "dense_kernel_to_torch", dense)
    i, o = dense.shape
    match(answer, dense.T, {
        "dense_kernel_to_torch reshapes: a reshape keeps the numbers in Keras' order; transpose instead":
            dense.reshape(o, i),
        "dense_kernel_to_torch returns Keras' (in, out): nn.Linear's weight is (out, in)": dense,
    }, "dense_kernel_to_torch(kernel)", shape_hint=" (out, in)")


def reference_fc1(kernel: np.ndarray, h: int, w: int, c: int) -> np.ndarray:
    """Keras' (h*w*c, out), rows in HWC order, to torch's (out, c*h*w), columns in CHW order."""
    out = kernel.shape[1]
    return kernel.reshape(h, w, c, out).transpose(2, 0, 1, 3).reshape(h * w * c, out).T


def _check_fc1(fn, fc1) -> None:
    kernel, h, w, c = fc1
    out = kernel.shape[1]
    answer = _answer(fn, "fc1_to_torch", kernel, h, w, c)
    match(answer, reference_fc1(kernel, h, w, c), {
        "fc1_to_torch only transposes: that is the trap. Keras' Flatten reads the map in (h, w, c) order, torch's in "
        "(c, h, w) order: reorder the kernel's rows first (reshape to (h, w, c, out), move c to the front, flatten back)":
            kernel.T,
        "fc1_to_torch applies the inverse reordering: it reads the rows as if they were in torch's (c, h, w) order. "
        "Keras' rows are in (h, w, c) order: reshape to (h, w, c, out) and move c to the front":
            kernel.reshape(c, h, w, out).transpose(1, 2, 0, 3).reshape(-1, out).T,
        "fc1_to_torch swaps h and w: the map ends up transposed (rows read as columns). Reshape the rows to "
        "(h, w, c, out), then move c first, keeping h before w": kernel.reshape(h, w, c, out).transpose(2, 1, 0, 3).reshape(-1, out).T,
        "fc1_to_torch reorders the rows right but forgets the transpose: nn.Linear's weight is (out, in)":
            reference_fc1(kernel, h, w, c).T,
        "fc1_to_torch returns Keras' kernel unchanged: reorder its rows to torch's (c, h, w) order, then transpose":
            kernel,
    }, "fc1_to_torch(kernel, h, w, c)", shape_hint=" (out, h*w*c)")


# ----------------------------------------------------------------------------------------------------
# Copying them into a twin


def copy_weights(twin, model, conv_kernel_to_torch, dense_kernel_to_torch, fc1_to_torch):
    """Overwrite every Conv2d and Linear weight of ``twin`` with the given conversions of ``model``'s kernels.

    ``model`` is a Backbone or a keras.Model, ``twin`` its ``labkit.keras_to_torch.to_torch`` twin. The
    first Dense layer after Flatten goes through ``fc1_to_torch(kernel, h, w, c)`` (h, w, c: the map
    Flatten flattens), the other Dense layers through ``dense_kernel_to_torch``, the convs through
    ``conv_kernel_to_torch``; biases are copied as they are. Returns the twin.
    """
    import keras
    import torch

    from ..keras_to_torch import _chain, _keras_model

    model = _keras_model(model)
    after_flatten = False
    with torch.no_grad():
        for layer in _chain(model):
            kind = type(layer).__name__
            if kind == "Flatten":
                after_flatten = True
            if kind not in ("Conv2D", "Dense"):
                continue
            kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), dtype=np.float32)
            if kind == "Conv2D":
                new, what = conv_kernel_to_torch(kernel), "conv_kernel_to_torch"
            elif after_flatten:
                new, what = fc1_to_torch(kernel, *twin.flatten_hwc), "fc1_to_torch"
                after_flatten = False  # only the first Dense after Flatten sees the flattened map
            else:
                new, what = dense_kernel_to_torch(kernel), "dense_kernel_to_torch"
            module = twin.features if kind == "Conv2D" else twin.classifier
            module = getattr(module, layer.name)
            new = torch.as_tensor(np.ascontiguousarray(as_array(new, what)), dtype=torch.float32)
            if tuple(new.shape) != tuple(module.weight.shape):
                raise ValueError(f"{what} gave {layer.name!r} a weight of shape {tuple(new.shape)}; the torch layer "
                                 f"needs {tuple(module.weight.shape)}")
            module.weight.copy_(new)
            if layer.use_bias:
                module.bias.copy_(torch.as_tensor(np.asarray(keras.ops.convert_to_numpy(layer.bias), np.float32)))
    return twin


def _tiny_keras():
    """conv(relu) conv(relu) pool | flatten dense(relu) dense(softmax) on 8x6 RGB (h != w), random weights."""
    return tiny_keras_cnn((8, 6, 3), (4, 5), (3, 2), dense=7, classes=3, seed=70)


def _check_twin(conv_fn, dense_fn, fc1_fn) -> None:
    import torch

    from ..keras_to_torch import parity_report, to_torch

    model = _tiny_keras()
    twin = to_torch(model)
    for p in twin.parameters():  # nothing of the reference conversion may survive
        p.data.fill_(float("nan"))
    try:
        copy_weights(twin, model, conv_fn, dense_fn, fc1_fn)
    except ValueError as exc:
        raise Hint(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a student function that only fails on a real layer
        raise Hint(f"copying the tiny model's weights with your functions raised {type(exc).__name__}: {exc}") from None
    x = torch.as_tensor(np.random.default_rng(71).normal(size=(2, 8, 6, 3)).astype(np.float32))
    rows = parity_report(model, twin, x, preprocessed=True)
    bad = [name for name, diff in rows if not diff <= 1e-4]  # `not <=` also catches NaN
    if bad:
        raise Hint(f"with your functions, the twin of a small CNN differs from Keras from layer {bad[0]!r} on "
                   f"({', '.join(bad)}): print keras_to_torch.format_parity(...) to see where")


def keras_to_torch(conv_kernel_to_torch, dense_kernel_to_torch, fc1_to_torch) -> bool:
    """Stage 07: the three kernel conversions, on their own and copied into the twin of a small CNN."""

    def run() -> str:
        with one_thread():  # tiny tensors
            return _run()

    def _run() -> str:
        conv, square, dense, fc1 = _kernels()
        _check_conv(conv_kernel_to_torch, conv, square)
        _check_dense(dense_kernel_to_torch, dense)
        _check_fc1(fc1_to_torch, fc1)
        _check_twin(conv_kernel_to_torch, dense_kernel_to_torch, fc1_to_torch)
        return ("conv kernels to (out, in, kh, kw), dense kernels transposed, fc1's rows reordered from (h, w, c) "
                "to (c, h, w): a small CNN's twin matches Keras within 1e-4 at every layer")

    return report(STAGE, run)
