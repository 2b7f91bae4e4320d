"""Guided backpropagation (Springenberg et al., 2015) and guided Grad-CAM (Selvaraju et al., 2017).

Guided backprop is the input gradient with one change at every ReLU on the way back: only *positive*
gradients pass, and only where the ReLU's input was positive::

    grad_in = (x > 0) * clamp(grad_out, min=0)     (plain backprop: (x > 0) * grad_out)

It needs the ReLUs as modules to hook, so :func:`guided_backprop` takes a torch model whose every ReLU
is its own ``nn.ReLU`` (the torch twin from ``labkit.keras_to_torch.to_torch``). Keras fuses the ReLU
into the conv layers, so there is nothing to hook in the Keras model: the course's simplified
:func:`guided_backprop_keras_approx` only keeps the positive part of the plain input gradient at the
input — it is **not** guided backprop, since the negative gradients still flow through every ReLU.

Guided Grad-CAM is the product of the guided backprop gradient image and the upsampled Grad-CAM map,
composed from :func:`guided_backprop` and :func:`labkit.gradcam.gradcam`.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from torch import nn

from .attribution import Explanation, prepare, to_numpy
from .gradcam import gradcam
from .models import Backbone
from .saliency import input_gradient


def _guided_hook(module, grad_input, grad_output):
    """Guided ReLU as a full backward hook, the course's way (``register_full_backward_hook``).

    grad_input[0] is already the ReLU's own backward, (x > 0) * grad_out: clamping it keeps the positive
    part. The stage-06 exercise writes this; :func:`guided_relus` gets the same numbers more cheaply.
    """
    if grad_input[0] is None:  # the ReLU's input does not need a gradient
        return None
    return (grad_input[0].clamp(min=0),)


def _clamp_relu_gradient(grad_inputs, grad_outputs):
    # A hook on the ReLU's backward node, run after it: grad_inputs[0] is what the ReLU's own backward
    # produced, (x > 0) * grad_out, and clamping it gives (x > 0) * clamp(grad_out, min=0): guided backprop
    # (the mask and the clamp commute). That tensor was just made by the ReLU's backward and goes only to
    # the layer before, so it is clamped in place: no activation-sized copy per ReLU.
    return (grad_inputs[0].clamp_(min=0),)


def _guide_output(module, inputs, output):
    # Each forward makes a new backward node for the ReLU, so its hook is planted here, in a forward hook.
    # A node hook costs one in-place clamp, where a full backward hook (the course's version) wraps the
    # module in extra autograd nodes that cost about half a forward pass on VGG16 (bench/methods.py).
    if output.grad_fn is not None:
        output.grad_fn.register_hook(_clamp_relu_gradient)


@contextmanager
def guided_relus(module: nn.Module):
    """Make every ``nn.ReLU`` in ``module`` pass only positive gradients backwards, while the context is active.

    In-place ReLUs are switched to ``inplace=False`` for the duration (their output would be the input
    tensor itself, shared with the layer before). On exit — also after an exception — every hook is
    removed and every ``inplace`` flag restored. Functional ``torch.relu`` calls are not modules and are
    not guided.
    """
    relus = [m for m in module.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError(
            f"{type(module).__name__} has no nn.ReLU modules to guide: use a model with one nn.ReLU per activation "
            "(labkit.keras_to_torch.to_torch builds one from a Keras model)"
        )
    handles, was_inplace = [], []
    try:
        for relu in relus:
            if relu.inplace:
                relu.inplace = False
                was_inplace.append(relu)
            handles.append(relu.register_forward_hook(_guide_output))
        yield module
    finally:
        for handle in handles:
            handle.remove()
        for relu in was_inplace:
            relu.inplace = True


def guided_backprop(model, images, target=None, score: str = "logit", preprocessed: bool = False) -> Explanation:
    """Springenberg et al.'s guided backprop on a torch model taking the preprocessed NHWC batch.

    One forward and one backward for the batch. ``raw`` (N, H, W, 3) is the signed guided gradient
    image (what the paper shows); ``maps`` (N, H, W) is max over channels of its absolute value.
    """
    if isinstance(model, Backbone):
        raise ValueError(
            "guided backprop hooks nn.ReLU modules, which Keras fuses into its convs: pass the torch twin "
            "(labkit.keras_to_torch.to_torch(backbone.model)), or use guided_backprop_keras_approx(backbone, images)"
        )
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
    with guided_relus(model):  # forward and backward both inside: the forward hooks plant the backward ones
        grad, targets = input_gradient(model, images, target, score, preprocessed)
    # |.| and max over RGB in torch, before leaving it (see labkit.saliency)
    maps = to_numpy(grad.abs().amax(dim=-1))
    return Explanation("guided_backprop", maps, to_numpy(targets).astype(np.int64), to_numpy(grad))


def guided_backprop_keras_approx(model, images, target=None, score: str = "logit", preprocessed: bool = False) -> Explanation:
    """The course's SIMPLIFIED stand-in for a Keras model: the positive part of the plain input gradient.

    NOT guided backprop: Keras fuses ReLU into the convs, so there is no ReLU module to hook, and the
    negative gradients still flow through every hidden ReLU; only the final input gradient is clamped.
    ``raw`` (N, H, W, 3) is ``max(d score / d x, 0)``; ``maps`` its max over channels. Works for any model.
    """
    grad, targets = input_gradient(model, images, target, score, preprocessed)
    positive = grad.clamp(min=0)
    return Explanation("guided_backprop_keras_approx", to_numpy(positive.amax(dim=-1)),
                       to_numpy(targets).astype(np.int64), to_numpy(positive))


def guided_gradcam(
    model,
    images,
    target=None,
    layer=None,
    twin: nn.Module | None = None,
    score: str = "logit",
    preprocessed: bool = False,
) -> Explanation:
    """Guided Grad-CAM: the guided backprop gradient image times the upsampled Grad-CAM map.

    ``guided_gradcam(model, images, target=None, layer=None, twin=None, score="logit")``

    * ``model``: what Grad-CAM runs on — a Backbone (``layer`` a Conv2D name) or a torch model.
    * ``twin``: the torch model guided backprop runs on, taking the same preprocessed NHWC batch. Default:
      ``model`` itself when it is a torch model; for a Backbone, ``labkit.keras_to_torch.to_torch`` of
      its Keras model, kept on the backbone until its weights change.
    The targets are Grad-CAM's (None: ``model``'s predicted class), passed on to guided backprop so that
    both parts explain the same class. ``raw`` (N, H, W, 3) is the signed product, ``maps`` (N, H, W)
    the guided backprop map times the Grad-CAM map.
    """
    x = prepare(model, images, preprocessed)
    if twin is None:
        twin = model if isinstance(model, nn.Module) else _torch_twin(model)
    cam = gradcam(model, x, target, layer=layer, score=score, preprocessed=True)
    guided = guided_backprop(twin, x, cam.targets, score=score, preprocessed=True)
    return Explanation(
        "guided_gradcam", guided.maps * cam.maps, cam.targets, guided.raw * cam.maps[..., None]
    )


def _weights_key(model) -> tuple:
    """Identifies the weights' current values: each variable's tensor and its in-place version counter.

    Keras (torch backend) assigns weights in place (``set_weights``, an optimizer step, ``load_weights``),
    which bumps the tensor's ``_version``; a new tensor has a new id. About 0.3 ms for VGG16's 32 variables.
    """
    values = [getattr(v, "value", v) for v in model.weights]
    return tuple((id(t), getattr(t, "_version", None)) for t in values)


def _torch_twin(backbone: Backbone) -> nn.Module:
    """The backbone's torch twin, rebuilt whenever its weights changed since it was copied.

    Converting VGG16 costs about four forward passes (5.5 s against 1.4 s on one CPU thread), so the twin is
    kept on the backbone; it is keyed on the weights (:func:`_weights_key`), so a randomised layer (the
    model-randomisation sanity check) never meets a stale copy.
    """
    key = (id(backbone.model), _weights_key(backbone.model))
    cached = getattr(backbone, "_torch_twin", None)
    if cached is not None and cached[0] is backbone.model and cached[1] == key:
        return cached[2]
    try:
        from .keras_to_torch import to_torch
    except ImportError:
        raise ValueError(
            "guided backprop needs a torch twin of the Keras model: pass twin=<a torch nn.Module with the same weights>"
        ) from None
    twin = to_torch(backbone.model)
    backbone._torch_twin = (backbone.model, key, twin)
    return twin
