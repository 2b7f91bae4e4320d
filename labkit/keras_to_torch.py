"""A PyTorch twin of a VGG-style Keras model, with the same weights and the same answers.

Why a twin: some methods need to reach inside the network in ways Keras does not offer on the torch
backend — a forward/backward hook on a ReLU (guided backpropagation, deconvnet), or a library that takes
an ``nn.Module`` (captum, pytorch-grad-cam). ``to_torch(model)`` builds the same network out of plain
torch modules and copies the weights, and ``parity_report`` proves, layer by layer, that it computes
what Keras computes.

Usage::

    twin = to_torch(backbone)                       # a Backbone or a keras.Model
    print_parity(parity_report(backbone, twin, images), tolerance=1e-4)
    probs = twin(backbone.tensor(images))           # == backbone.predict(images)

Structure of the twin (``KerasTwin``), for whoever hooks into it::

    twin(x)            x: the SAME preprocessed NHWC float batch the Keras model takes (permuted to NCHW
                       inside); returns what Keras returns (probabilities when the last Dense has softmax)
    twin.logits(x)     the last Dense layer's output before its softmax (== twin(x) if it has none)
    twin.as_nchw(logits=False)  the same modules behind an NCHW-input forward (for pytorch-grad-cam)
    twin.features      nn.Sequential, NCHW, everything before Flatten. Child names are Keras layer names:
                         "block1_conv1"       nn.Conv2d   (pre-activation)
                         "block1_conv1_relu"  nn.ReLU     (its own module, inplace=False, so it can be hooked)
                         "block1_conv1_pad"   nn.ZeroPad2d, only where Keras' "same" padding is asymmetric
                         "block1_pool"        nn.MaxPool2d
    twin.classifier    nn.Sequential, Flatten onwards, without the final softmax:
                         "flatten" nn.Flatten, "fc1" nn.Linear, "fc1_relu" nn.ReLU, ..., "predictions" nn.Linear
    twin.softmax       nn.Softmax(dim=1) when the last layer's activation is softmax, else nn.Identity
    twin.layer(name)   the module whose OUTPUT equals Keras layer ``name``'s output: for a conv with a fused
                       ReLU that is the ReLU ("block5_conv3" -> twin.features.block5_conv3_relu), which is
                       where Grad-CAM hooks; torch child names ("block5_conv3_relu") are accepted as well
    twin.keras_layers  Keras layer names in forward order (InputLayer excluded)
    twin.output_of     {Keras layer name: dotted torch module name whose output is that layer's output}
    twin.relus()       [(name, nn.ReLU)] in forward order — what guided backprop swaps or hooks
    twin.intermediates(x) {Keras layer name: tensor in torch layout (NCHW / NC)}, one forward pass
    twin.split(name)   (up_to, after) at a module of twin.features: the network cut in two without hooks,
                       for Grad-CAM (``up_to(x)`` the module's NCHW output, ``after(a)`` the logits)

Every parameter has ``requires_grad=False`` (the twin is frozen, like the backbone: gradients w.r.t. the
*input* still flow) and the twin is in eval mode, on the Keras model's device. So a backward pass needs
an input with ``requires_grad=True`` — pytorch-grad-cam, for one, does not set it by itself.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

import keras
import numpy as np
import torch
from torch import nn

SUPPORTED = (
    "InputLayer, Conv2D (padding same/valid, activation relu/linear/softmax), MaxPooling2D, Flatten, "
    "Dense (relu/linear/softmax), Activation (relu/linear/softmax), ReLU (default arguments), Dropout"
)
_ACTIVATIONS = ("relu", "linear", "softmax")


def _keras_model(model) -> keras.Model:
    """A Backbone or a keras.Model, as the keras.Model."""
    inner = getattr(model, "model", None)
    if isinstance(inner, keras.Model):
        return inner
    if isinstance(model, keras.Model):
        return model
    raise ValueError(f"expected a keras.Model or a labkit Backbone, got {type(model).__name__}: "
                     "pass the backbone or its .model")


def _unsupported(layer, why: str = "") -> ValueError:
    why = f" ({why})" if why else ""
    return ValueError(f"cannot convert layer {layer.name!r} ({type(layer).__name__}{why}): supported layers are {SUPPORTED}")


def _activation_name(layer) -> str:
    act = getattr(layer, "activation", None)
    name = getattr(act, "__name__", str(act))
    if name not in _ACTIVATIONS:
        raise _unsupported(layer, f"activation {name!r}")
    return name


def _value(variable) -> torch.Tensor:
    """A Keras variable's torch tensor, detached, float32, copied (the twin must not share storage)."""
    value = getattr(variable, "value", None)
    if isinstance(value, torch.Tensor):  # the torch backend: stay on the variable's device
        return value.detach().float().clone()
    return torch.as_tensor(np.array(keras.ops.convert_to_numpy(variable), dtype=np.float32))


def _same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Keras/TensorFlow "same" padding along one axis: (before, after); the odd pixel goes after."""
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _chain(model: keras.Model) -> list:
    """The model's layers in order, checking that each one takes the previous one's output (a plain chain)."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"to_torch converts single-input single-output chains; {model.name} has "
                         f"{len(model.inputs)} inputs and {len(model.outputs)} outputs")
    chain, previous = [], model.inputs[0]
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if layer.input is not previous:
            raise ValueError(f"layer {layer.name!r} does not take the previous layer's output: to_torch converts "
                             "plain chains of layers (no branches, no skip connections)")
        chain.append(layer)
        previous = layer.output
    return chain


class KerasTwin(nn.Module):
    """A torch module built by :func:`to_torch`; see the module docstring for its structure."""

    def __init__(self, features, classifier, softmax, output_of, keras_layers, name, input_shape, flatten_hwc=None):
        super().__init__()
        self.flatten_hwc = flatten_hwc  # (H, W, C) of the map that Flatten flattens, None without a Flatten
        self.features = features
        self.classifier = classifier
        self.softmax = softmax
        self.output_of = dict(output_of)
        self.keras_layers = tuple(keras_layers)
        self.keras_name = name
        self.input_shape = tuple(input_shape)  # (H, W, C) of one NHWC input
        # attribution.class_scores reads this to know that forward() already returns probabilities
        self.outputs_probabilities = isinstance(softmax, nn.Softmax)
        self._splits: dict[str, tuple[nn.Sequential, nn.Sequential]] = {}  # see split(); not submodules

    def _nchw(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"the twin of {self.keras_name} takes preprocessed NHWC batches of shape "
                             f"(N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2)  # Keras is NHWC, torch convs are NCHW

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Scores before the final softmax."""
        return self.classifier(self.features(self._nchw(x)))

    def as_nchw(self, logits: bool = False) -> nn.Module:
        """The same network (same modules: hooks on ``twin.layer(...)`` still fire) taking NCHW batches.

        For libraries that read the image size from an NCHW input, e.g. pytorch-grad-cam, which upsamples
        its maps to ``input.shape[-2:]``. ``logits=True`` leaves out the final softmax.
        """
        return _NCHWView(self, logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.softmax(self.logits(x))

    def layer(self, name: str) -> nn.Module:
        """The module whose output equals Keras layer ``name``'s output (or a torch child by its own name)."""
        modules = dict(self.named_modules())
        if name in self.output_of:
            return modules[self.output_of[name]]
        for prefix in ("features.", "classifier.", ""):
            if prefix + name in modules and prefix + name != "":
                return modules[prefix + name]
        raise ValueError(f"the twin of {self.keras_name} has no layer {name!r}: choose one of {', '.join(self.keras_layers)}")

    def split(self, name: str):
        """``(up_to, after)``: the twin cut after ``name``, a child of ``twin.features`` (dotted or not).

        ``up_to(x)`` maps the preprocessed NHWC batch to that module's NCHW output, ``after(a)`` maps that
        output to the logits; ``after(up_to(x)) == twin.logits(x)``. Both are the twin's own modules (hooks on
        them still fire), put in two ``nn.Sequential`` built once per name. This is the course's Grad-CAM
        split, without the forward hook a generic model needs. None when ``name`` is not in
        ``twin.features`` (a layer after Flatten gives no feature maps).
        """
        key = name.removeprefix("features.")
        if key not in self.features._modules:
            return None
        if key not in self._splits:
            i = list(self.features._modules).index(key)
            self._splits[key] = (self.features[: i + 1], nn.Sequential(self.features[i + 1 :], self.classifier))
        up_to, after = self._splits[key]
        return (lambda x: up_to(self._nchw(x))), after

    def relus(self) -> list[tuple[str, nn.ReLU]]:
        return [(n, m) for n, m in self.named_modules() if isinstance(m, nn.ReLU)]

    def intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every Keras layer's output (torch layout) from one forward pass, plus ``"logits"``."""
        wanted = {v: k for k, v in self.output_of.items()}
        out, h = {}, self._nchw(x)
        for prefix, seq in (("features.", self.features), ("classifier.", self.classifier)):
            for child_name, child in seq.named_children():
                h = child(h)
                if prefix + child_name in wanted:
                    out[wanted[prefix + child_name]] = h
        out["logits"] = h
        if "softmax" in wanted:
            out[wanted["softmax"]] = self.softmax(h)
        return out


class _NCHWView(nn.Module):
    def __init__(self, twin: KerasTwin, logits: bool):
        super().__init__()
        self.twin, self.return_logits = twin, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.twin.input_shape[2]
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"this view of the twin takes NCHW batches with {c} channels, got {tuple(x.shape)}")
        z = self.twin.classifier(self.twin.features(x))
        return z if self.return_logits else self.twin.softmax(z)


def to_torch(keras_model, permute_flatten: bool = True) -> KerasTwin:
    """Build a torch twin of a VGG-style Keras model (or a Backbone's model) and copy its weights.

    ``permute_flatten=False`` skips the flatten-order fix of the first Dense layer after Flatten. It exists
    for teaching only: the twin then runs, with every shape right, and gives wrong answers.
    """
    model = _keras_model(keras_model)
    chain = _chain(model)
    in_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    if len(in_shape) != 3:
        raise ValueError(f"to_torch converts image models with (H, W, C) inputs; {model.name} takes {in_shape}")

    dev = _device(model)  # build on the Keras weights' device: no round trip through the CPU for VGG16's 0.5 GB
    features, classifier = OrderedDict(), OrderedDict()
    output_of: dict[str, str] = {}
    flat_hwc = None  # (H, W, C) that Flatten saw, until the first Dense after it has been converted
    flatten_hwc = None
    flattened = False
    n = len(chain)

    for index, layer in enumerate(chain):
        target, prefix = (classifier, "classifier.") if flattened else (features, "features.")
        kind = type(layer).__name__
        last = index == n - 1

        def add(name, module, target=target, prefix=prefix):
            target[name] = module
            return prefix + name

        def activation(act, fused=True, last=last):
            """The module for an activation; None for linear. Fused ones are named "<layer>_relu" etc."""
            if act == "relu":
                return add(f"{layer.name}_relu" if fused else layer.name, nn.ReLU(inplace=False))
            if act == "softmax":
                if last:
                    return "softmax"  # kept out of the classifier, so that logits() can stop before it
                # over channels: dim 1 is the channel axis of NCHW maps and the feature axis of NC batches
                return add(f"{layer.name}_softmax" if fused else layer.name, nn.Softmax(dim=1))
            return None

        if kind == "Conv2D":
            if layer.data_format != "channels_last":
                raise _unsupported(layer, f"data_format {layer.data_format}")
            if getattr(layer, "groups", 1) != 1:
                raise _unsupported(layer, f"groups={layer.groups}")
            act = _activation_name(layer)
            kh, kw = layer.kernel_size
            sh, sw = layer.strides
            dh, dw = layer.dilation_rate
            h_in, w_in = (int(d) for d in layer.input.shape[1:3])
            conv = nn.Conv2d(int(layer.input.shape[-1]), layer.filters, (kh, kw), stride=(sh, sw),
                             dilation=(dh, dw), bias=layer.use_bias, device=dev)
            if layer.padding == "same":
                (top, bottom), (left, right) = _same_padding(h_in, kh, sh, dh), _same_padding(w_in, kw, sw, dw)
                if top == bottom and left == right:
                    conv.padding = (top, left)
                else:  # TensorFlow puts the odd padding pixel after; torch only pads symmetrically
                    add(f"{layer.name}_pad", nn.ZeroPad2d((left, right, top, bottom)))
            elif layer.padding != "valid":
                raise _unsupported(layer, f"padding {layer.padding!r}")
            with torch.no_grad():
                conv.weight.copy_(_value(layer.kernel).permute(3, 2, 0, 1))  # HWIO -> OIHW
                if layer.use_bias:
                    conv.bias.copy_(_value(layer.bias))
            output_of[layer.name] = add(layer.name, conv)
            output_of[layer.name] = activation(act) or output_of[layer.name]

        elif kind == "MaxPooling2D":
            if layer.data_format != "channels_last":
                raise _unsupported(layer, f"data_format {layer.data_format}")
            (kh, kw), (sh, sw) = layer.pool_size, layer.strides
            if layer.padding == "same":
                h_in, w_in = (int(d) for d in layer.input.shape[1:3])
                (top, bottom), (left, right) = _same_padding(h_in, kh, sh), _same_padding(w_in, kw, sw)
                if top or bottom or left or right:  # Keras pads a max-pool with -inf: padding never wins
                    add(f"{layer.name}_pad", nn.ConstantPad2d((left, right, top, bottom), float("-inf")))
            elif layer.padding != "valid":
                raise _unsupported(layer, f"padding {layer.padding!r}")
            output_of[layer.name] = add(layer.name, nn.MaxPool2d((kh, kw), stride=(sh, sw)))

        elif kind == "Flatten":
            shape = tuple(int(d) for d in layer.input.shape[1:])
            if len(shape) != 3:
                raise _unsupported(layer, f"Flatten of a {len(shape) + 1}-d tensor")
            flat_hwc = flatten_hwc = shape
            flattened = True
            output_of[layer.name] = add(layer.name, nn.Flatten(), classifier, "classifier.")

        elif kind == "Dense":
            if len(layer.input.shape) != 2:
                raise _unsupported(layer, "Dense on a spatial tensor: put a Flatten before it")
            act = _activation_name(layer)
            kernel = _value(layer.kernel)  # (in, out), rows in the order Keras' Flatten produced them
            if flat_hwc is not None and permute_flatten:
                # THE TRAP. Keras flattens an NHWC map, so row (i*W + j)*C + c of fc1's kernel multiplies
                # pixel (i, j) of channel c. torch flattens NCHW, where that value sits at c*H*W + i*W + j.
                # Copying the kernel as-is runs, with every shape right, and gives wrong answers. So torch
                # input position t = c*H*W + i*W + j must read Keras row perm[t] = (i*W + j)*C + c:
                h, w, c = flat_hwc
                perm = torch.arange(h * w * c, device=kernel.device).reshape(h, w, c).permute(2, 0, 1).reshape(-1)
                kernel = kernel[perm]
            flat_hwc = None  # only the first Dense after Flatten sees the flattened map
            linear = nn.Linear(kernel.shape[0], kernel.shape[1], bias=layer.use_bias, device=dev)
            with torch.no_grad():
                linear.weight.copy_(kernel.T)  # Keras (in, out) -> torch (out, in)
                if layer.use_bias:
                    linear.bias.copy_(_value(layer.bias))
            output_of[layer.name] = add(layer.name, linear)
            output_of[layer.name] = activation(act) or output_of[layer.name]

        elif kind == "Activation":
            act = _activation_name(layer)
            output_of[layer.name] = activation(act, fused=False) or add(layer.name, nn.Identity())

        elif kind == "ReLU":
            if (layer.max_value is not None or float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0):
                raise _unsupported(layer, "only max_value=None, negative_slope=0, threshold=0")
            output_of[layer.name] = add(layer.name, nn.ReLU(inplace=False))

        elif kind == "Dropout":
            output_of[layer.name] = add(layer.name, nn.Identity())  # inference: dropout does nothing

        else:
            raise _unsupported(layer)

    softmax = nn.Softmax(dim=1) if "softmax" in output_of.values() else nn.Identity()
    twin = KerasTwin(nn.Sequential(features), nn.Sequential(classifier), softmax, output_of,
                     [l.name for l in chain], model.name, in_shape, flatten_hwc)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin.to(dev).eval()


def _device(model: keras.Model) -> torch.device:
    for w in model.weights:
        if hasattr(w, "value") and isinstance(w.value, torch.Tensor):
            return w.value.device
    from .models import device

    return device()


# ----------------------------------------------------------------------------------------------------
# Parity: does the twin compute what Keras computes?


class ParityRow(NamedTuple):
    layer: str
    max_abs_diff: float


def _keras_logits(model: keras.Model, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The last Dense layer's pre-softmax output, from its input (the previous layer's output)."""
    chain = _chain(model)
    last = chain[-1]
    if type(last).__name__ not in ("Dense", "Activation") or _activation_name(last) != "softmax":
        return outputs[last.name]
    if type(last).__name__ == "Activation":
        return outputs[chain[-2].name]
    h = outputs[chain[-2].name] if len(chain) > 1 else None
    if h is None:
        raise ValueError("cannot compute the logits of a one-layer model")
    out = keras.ops.matmul(h, last.kernel)
    return out + last.bias if last.use_bias else out


def parity_report(keras_model, torch_model: KerasTwin, images, preprocessed: bool | None = None) -> list[ParityRow]:
    """Max |Keras - torch| for every Keras layer's output, then for the logits, on one batch.

    ``keras_model`` is a keras.Model (``images`` are then its preprocessed NHWC input) or a Backbone
    (``images`` are RGB pixels, preprocessed by the backbone, unless ``preprocessed=True``).
    Keras activations are NHWC; the twin's NCHW maps are permuted before comparing.
    """
    model = _keras_model(keras_model)
    if preprocessed is None:
        preprocessed = keras_model is model
    if not preprocessed:
        x = keras_model.tensor(images)
    else:
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images, dtype=torch.float32)
        x = x.to(_device(model))
    chain = _chain(model)
    names = [l.name for l in chain]
    probe = keras.Model(model.inputs[0], [l.output for l in chain], name=f"{model.name}_all_layers")
    with torch.no_grad():
        k_out = dict(zip(names, probe(x)))
        k_out["logits"] = _keras_logits(model, k_out)
        t_out = torch_model.intermediates(x)
    rows = []
    for name in names + ["logits"]:
        k, t = k_out[name], t_out[name]
        if t.ndim == 4:
            t = t.permute(0, 2, 3, 1)  # NCHW -> NHWC
        elif name != "logits" and type(model.get_layer(name)).__name__ == "Flatten":
            # the same numbers in another order (see the trap in to_torch): compare in Keras' HWC order
            h, w, c = torch_model.flatten_hwc
            t = t.reshape(-1, c, h, w).permute(0, 2, 3, 1).reshape(t.shape[0], -1)
        if tuple(k.shape) != tuple(t.shape):
            raise ValueError(f"layer {name!r}: Keras output {tuple(k.shape)} but torch output {tuple(t.shape)}")
        rows.append(ParityRow(name, float((k - t).abs().max())))
    return rows


def format_parity(report, tolerance: float | None = None) -> str:
    """The report as a text table (and an ok/FAIL column when a tolerance is given)."""
    width = max(len("layer"), *(len(r[0]) for r in report))
    head = f"{'layer':<{width}}  max |keras - torch|"
    lines = [head + ("  ok?" if tolerance is not None else ""), "-" * (len(head) + (5 if tolerance is not None else 0))]
    for name, diff in report:
        verdict = ("" if tolerance is None else ("  ok" if diff <= tolerance else "  FAIL"))
        lines.append(f"{name:<{width}}  {diff:19.3g}{verdict}")
    return "\n".join(lines)


def print_parity(report, tolerance: float | None = None) -> None:
    print(format_parity(report, tolerance))
