"""Grad-CAM (Selvaraju et al., 2017): which regions of a conv layer's feature maps raise the class score.

The course's split of the network at a convolutional layer L:

* the **features** model: input .. L, giving the feature maps A (N, K, h, w);
* the **head**: the layers after L applied in order to A (from the next layer's input to the output),
  giving the class score y^c (the logit by default, as in the paper).

Grad-CAM weights each channel by the spatial mean of the gradient of the score and keeps the positive
part of the weighted sum::

    alpha_k^c = mean_{i,j} dy^c / dA^k_ij        cam^c = ReLU(sum_k alpha_k^c A^k)

The features part runs under ``torch.no_grad`` (no graph is recorded there); A is then made a leaf
tensor that requires grad and the backward pass goes through the head only. One call therefore costs one
forward pass plus a backward pass through the (small) head.

Design (as in pytorch-grad-cam): :class:`CAMBase` holds the skeleton — split, forward, backward,
channel weights, combine, ReLU, upsample — and a method is a subclass that overrides
:meth:`CAMBase.channel_weights`. :class:`GradCAM` is one. Class Activation Mapping (Zhou et al.) reuses
the skeleton with ``uses_gradients = False`` and the dense layer's weights as the channel weights;
:func:`combine` and :meth:`CAMBase.explanation` are the reusable combine/upsample part.

Models:

* a :class:`labkit.models.Backbone`: ``layer`` is a layer name (default ``backbone.last_conv_layer``) and
  must be a ``Conv2D``. Keras fuses the ReLU into the conv, so A is the conv's output *after* its ReLU.
  The head is the chain of layers after L; the logit is computed from the last Dense layer's kernel and
  bias (before its softmax).
* a torch ``nn.Module`` taking the same preprocessed NHWC batch (e.g. the torch twin): ``layer`` is a
  submodule or its dotted name, whose output is NCHW feature maps (torch's layout); for a model with a
  ``layer(name)`` method (the twin from ``labkit.keras_to_torch``) a name goes through it, so the twin
  takes the Keras layer names ("block5_conv3" is the ReLU after that conv). A forward hook,
  installed only for the call (a context manager), swaps the layer's output for the leaf A. Default: the
  module named by ``model.last_conv_layer`` if the model has that attribute, else the last ``nn.Conv2d``
  — followed by its ``nn.ReLU`` when one comes right after it, so that A matches Keras' fused conv+ReLU.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .attribution import SCORES, Explanation, class_scores, prepare, resolve_targets, to_numpy, upsample
from .models import Backbone


def combine(activations: torch.Tensor, weights: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """sum_k w_k A^k for each image: activations (N, K, h, w), weights (N, K) -> (N, h, w), ReLU'd by default.

    Shared by every CAM-style method: Grad-CAM passes gradient means, CAM passes the dense layer's weights.
    """
    if weights.shape != activations.shape[:2]:
        raise ValueError(f"weights {tuple(weights.shape)} must be (N, K) for activations {tuple(activations.shape)}")
    n, k, h, w = activations.shape
    # (N, 1, K) @ (N, K, h*w): a batched matrix product, a third of the time einsum takes on small maps
    cam = torch.matmul(weights[:, None, :], activations.reshape(n, k, h * w)).reshape(n, h, w)
    return cam.clamp(min=0) if relu else cam


class CAMBase:
    """The CAM skeleton: split the model at ``layer``, forward, backward, channel weights, combine, upsample.

    Subclasses set :attr:`method` and override :meth:`channel_weights`; one that needs no gradient (CAM)
    sets ``uses_gradients = False`` and the backward pass is skipped. Call the instance like a method::

        GradCAM(model, layer="block5_conv3")(images, target=None) -> Explanation
    """

    method = "cam"
    uses_gradients = True

    def __init__(self, model, layer=None, score: str = "logit"):
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.model = model
        self.score = score
        if isinstance(model, Backbone):
            self.layer_name, self._features, self._head, self._final = _keras_split(model, layer)
            self.layer = model.model.get_layer(self.layer_name)
        elif isinstance(model, nn.Module):
            self.layer, self.layer_name = _torch_layer(model, layer)
            # The torch twin can be cut in two directly; any other module gets the forward hook (_leaf_at).
            self._split = _twin_split(model, self.layer_name)
        else:
            raise ValueError(f"model must be a labkit Backbone or a torch nn.Module, got {type(model).__name__}")

    # -- the skeleton ------------------------------------------------------------------------------------

    def __call__(self, images, target=None, preprocessed: bool = False) -> Explanation:
        # One pass for the whole batch: only the head keeps a graph, so memory stays small (unlike saliency,
        # which splits large batches), and on a CPU splitting VGG16's batch of 16 measured 7% slower.
        x = prepare(self.model, images, preprocessed)
        activations, scores = self.forward(x)
        targets = resolve_targets(target, scores)
        gradients = self.backward(activations, scores, targets) if self.uses_gradients else None
        with torch.no_grad():
            a = activations.detach()
            weights = self.channel_weights(a, gradients, scores.detach(), targets)
            cam = combine(a, weights)
        return self.explanation(cam, targets, tuple(x.shape[1:3]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A (N, K, h, w) as a leaf that requires grad, and the head's scores (N, C) with a graph back to A."""
        if isinstance(self.model, Backbone):
            with torch.no_grad():  # input .. L: no graph, no gradient needed there
                a = self._features(x)  # (N, h, w, K), Keras' layout
            activations = a.permute(0, 3, 1, 2).requires_grad_(True)  # a view of a graph-less tensor: a leaf
            with torch.enable_grad():  # even if the caller is inside torch.no_grad()
                scores = _keras_head(self._head, self._final, activations.permute(0, 2, 3, 1), self.score)
            return activations, scores
        if self._split is not None:
            up_to, after = self._split
            with torch.no_grad():  # input .. L: no graph
                activations = up_to(x).requires_grad_(True)  # a graph-less tensor: a leaf
            with torch.enable_grad():
                logits = after(activations)
            return activations, logits if self.score == "logit" else torch.softmax(logits, dim=1)
        with _leaf_at(self.layer, self.layer_name) as store, torch.no_grad():
            scores = class_scores(self.model, x, self.score)  # the hook turns the graph on after L
        if "A" not in store:
            raise ValueError(f"layer {self.layer_name!r} is not used by the model's forward: choose a layer it runs")
        return store["A"], scores

    def backward(self, activations, scores, targets) -> torch.Tensor:
        """dy^c/dA (N, K, h, w): one backward through the head for the whole batch.

        The sum of each image's own target score: images do not interact, so the gradient of the sum
        w.r.t. image i's feature maps is the gradient of image i's score.
        """
        with torch.enable_grad():  # the selection is part of the graph, even inside the caller's no_grad
            chosen = scores.gather(1, targets[:, None]).sum()
        (grads,) = torch.autograd.grad(chosen, activations)
        return grads

    def channel_weights(self, activations, gradients, scores, targets) -> torch.Tensor:
        """(N, K) weights of the feature maps: what a CAM method defines."""
        raise NotImplementedError("a CAM method defines channel_weights(activations, gradients, scores, targets)")

    def explanation(self, cam: torch.Tensor, targets: torch.Tensor, size: tuple[int, int]) -> Explanation:
        """The Explanation: raw (N, h, w) maps, and maps upsampled (bilinear) to the input size."""
        # The tensor is upsampled where it is (see labkit.attribution.upsample): same numbers as skimage.
        return Explanation(self.method, upsample(cam, size), to_numpy(targets).astype(np.int64), to_numpy(cam))


class GradCAM(CAMBase):
    """Grad-CAM: channel k weighs the spatial mean of dy^c/dA^k (the paper's alpha_k^c, Eq. 1)."""

    method = "gradcam"
    uses_gradients = True

    def channel_weights(self, activations, gradients, scores, targets):
        return gradients.mean(dim=(2, 3))


def gradcam(model, images, target=None, layer=None, score: str = "logit", preprocessed: bool = False) -> Explanation:
    """Grad-CAM maps of ``images`` for ``target`` (None: each image's predicted class).

    ``layer``: a Conv2D layer name of a Backbone (default ``last_conv_layer``), or a submodule (or its
    name) of a torch model. ``score``: "logit" (the paper's y^c, default) or "probability".
    ``raw`` is the (N, h, w) map at the layer's resolution, ``maps`` the same upsampled to (H, W).
    """
    return GradCAM(model, layer, score=score)(images, target, preprocessed=preprocessed)


def activations_and_gradients(model, images, target=None, layer=None, score: str = "logit", preprocessed: bool = False):
    """(A, dy^c/dA, classes): the split's feature maps and gradients as numpy arrays, channels last (N, h, w, K).

    The reference of stage 05's split exercise, computed by :class:`GradCAM`'s own forward and backward
    (one pass; ``target`` None: each image's predicted class). For a torch model the arrays are (N, h, w, K) too.
    """
    split = GradCAM(model, layer, score=score)
    x = prepare(model, images, preprocessed)
    a, scores = split.forward(x)
    classes = resolve_targets(target, scores.detach())
    grads = split.backward(a, scores, classes)
    nhwc = lambda t: t.detach().permute(0, 2, 3, 1).cpu().numpy()
    return nhwc(a), nhwc(grads), to_numpy(classes).astype(np.int64)


# -- Keras: the split ------------------------------------------------------------------------------------


def _keras_split(backbone: Backbone, layer):
    """(name, features model, head layers, final Dense layer), built once per backbone and layer."""
    import keras

    if layer is None:
        layer = backbone.last_conv_layer
    if isinstance(layer, keras.layers.Layer):
        layer = layer.name
    if not isinstance(layer, str):
        raise ValueError(f"layer must be a layer name of {backbone.name}, got {type(layer).__name__}")
    conv = backbone.layer(layer)  # unknown name: a one-line error listing the names
    if not isinstance(conv, keras.layers.Conv2D):
        raise ValueError(
            f"{layer!r} is a {type(conv).__name__} layer, not a Conv2D: Grad-CAM needs convolutional feature maps; "
            f"choose one of {', '.join(backbone.conv_layers())}"
        )
    cache = getattr(backbone, "_cam_splits", None)
    if cache is None or cache[0] is not backbone.model:
        cache = (backbone.model, {})
        backbone._cam_splits = cache  # a keras.Model costs milliseconds to build: once per layer
    if layer not in cache[1]:
        model = backbone.model
        layers = model.layers
        i = layers.index(conv)
        if i == len(layers) - 1:
            raise ValueError(f"{layer!r} is the model's output: choose a conv layer that has layers after it")
        # The head is applied layer by layer, which is only the model if the layers after L form a chain.
        for prev, nxt in zip(layers[i:], layers[i + 1 :]):
            if nxt.input is not prev.output:
                raise ValueError(
                    f"the layers after {layer!r} are not a plain chain ({nxt.name!r} does not take {prev.name!r}'s "
                    "output): Grad-CAM's head split needs a VGG-like model"
                )
        if layers[-1].output is not model.outputs[0]:
            raise ValueError(f"{model.name}'s output is not its last layer's: Grad-CAM's head split needs a chain")
        features = keras.Model(model.inputs, conv.output, name=f"{model.name}_to_{layer}")
        cache[1][layer] = (features, tuple(layers[i + 1 : -1]), layers[-1])
    features, head, final = cache[1][layer]
    return layer, features, head, final


def _keras_head(head, final, a: torch.Tensor, score: str) -> torch.Tensor:
    """The class scores from the feature maps a (N, h, w, K): the head's layers in order, then the last one."""
    import keras

    h = a
    for layer in head:
        h = layer(h)
    softmax = getattr(final, "activation", None) is keras.activations.softmax
    if not softmax:  # the model outputs logits already
        logits = final(h)
        return logits if score == "logit" else torch.softmax(logits, dim=1)
    if score == "probability":
        return final(h)
    # The logit: the last Dense layer without its softmax (as labkit.attribution.class_scores does).
    return keras.ops.matmul(h, final.kernel) + final.bias


# -- torch: the layer and the hook ---------------------------------------------------------------------


def _twin_split(model: nn.Module, name: str):
    """The twin's own split at ``name`` (labkit.keras_to_torch.KerasTwin.split), or None for other models."""
    from .keras_to_torch import KerasTwin

    return model.split(name) if isinstance(model, KerasTwin) else None


def _torch_layer(model: nn.Module, layer) -> tuple[nn.Module, str]:
    """(the submodule whose output is A, its dotted name): given (module or name) or the default (module docstring)."""
    default = layer is None
    if default:
        layer = getattr(model, "last_conv_layer", None)
        if layer is None:
            return _after_conv(model, None)
    if isinstance(layer, str) and isinstance(getattr(model, "output_of", None), dict) and layer in model.output_of:
        # The torch twin (labkit.keras_to_torch) maps a Keras layer name to the module whose output is that
        # layer's output: "block5_conv3" -> its ReLU, since Keras fuses the ReLU into the conv.
        name = model.output_of[layer]
        module = model.get_submodule(name)
    elif isinstance(layer, str) and callable(getattr(model, "layer", None)):
        module = model.layer(layer)  # the twin's other names (its torch child names); unknown: its error
        name = _name_of(model, module)
    elif isinstance(layer, str):
        try:
            module, name = model.get_submodule(layer), layer
        except AttributeError:
            names = ", ".join(n for n, m in model.named_modules() if n and isinstance(m, (nn.Conv2d, nn.ReLU)))
            raise ValueError(f"the model has no submodule {layer!r}: choose one of {names}") from None
    else:
        module, name = layer, _name_of(model, layer)
    if default and isinstance(module, nn.Conv2d):
        return _after_conv(model, module)
    return module, name


def _name_of(model: nn.Module, layer) -> str:
    name = next((n for n, m in model.named_modules() if m is layer), None) if isinstance(layer, nn.Module) else None
    if name is None:
        raise ValueError("layer must be a submodule of the model (or its name, as in model.named_modules())")
    return name or type(model).__name__


def _after_conv(model: nn.Module, conv: nn.Conv2d | None) -> tuple[nn.Module, str]:
    """``conv`` (default: the last nn.Conv2d), or the nn.ReLU right after it, as Keras fuses conv and ReLU."""
    leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
    convs = [i for i, (_, m) in enumerate(leaves) if (m is conv if conv is not None else isinstance(m, nn.Conv2d))]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d: pass layer=<the module giving the feature maps>")
    i = convs[-1]
    if i + 1 < len(leaves) and isinstance(leaves[i + 1][1], nn.ReLU):
        i += 1
    name, module = leaves[i]
    return module, name


@contextmanager
def _leaf_at(layer: nn.Module, name: str):
    """While active, ``layer``'s output is replaced by a leaf A that requires grad (kept in the yielded dict).

    Run the model under ``torch.no_grad()``: the hook turns the graph on when ``layer`` has run, so only the
    head records a graph and the backward pass stops at A. The no_grad context restores the grad mode on
    exit, also after an exception. The hook is removed on exit, whatever happens.
    """
    store: dict[str, torch.Tensor] = {}

    def hook(module, inputs, output):
        if "A" in store:
            raise ValueError(f"layer {name!r} runs more than once in the model's forward: choose a layer used once")
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"layer {name!r} outputs {shape}, not (N, K, h, w) feature maps: choose a Conv2d (or the ReLU after it)"
            )
        a = output.detach().requires_grad_(True)
        store["A"] = a
        torch.set_grad_enabled(True)  # the rest of the forward (the head) records a graph back to A
        # A copy goes on, so that an in-place op downstream (ReLU(inplace=True)) cannot modify the leaf A.
        return a.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()
