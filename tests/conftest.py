"""Shared fixtures: tiny hand-built networks (torch and Keras with the same weights), hook inspection, VGG16.

The tiny nets take the preprocessed NHWC batch, like every labkit model, and run in milliseconds.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import labkit  # noqa: F401  (pins the Keras backend before keras is imported)
import keras  # noqa: E402
from labkit.models import Backbone, freeze  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "vgg16: shape-only check on Keras' VGG16 with random weights (seconds); deselect: -m 'not vgg16'"
    )


class NHWCNet(nn.Module):
    """conv(3->4) ReLU conv(4->5) ReLU maxpool(2) | flatten (NHWC order, as Keras) fc(->6) ReLU fc(->classes).

    Returns logits. Counts its forward calls and the images it has seen (to count wasted forwards).
    """

    def __init__(self, size: int = 8, classes: int = 3, inplace: bool = False, seed: int = 0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(inplace), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(nn.Linear(5 * (size // 2) ** 2, 6), nn.ReLU(inplace), nn.Linear(6, classes))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # He-scaled weights, small biases: logits of order 1, probabilities far from 0 and 1
            for name, p in self.named_parameters():
                scale = (2 / p[0].numel()) ** 0.5 if name.endswith("weight") else 0.1
                p.copy_(torch.randn(p.shape, generator=g) * scale)
        self.calls = 0
        self.seen = 0

    def forward(self, x):
        self.calls += 1
        self.seen += len(x)
        h = self.features(x.permute(0, 3, 1, 2))
        return self.classifier(h.permute(0, 2, 3, 1).flatten(1))


def keras_tiny(size: int = 8, classes: int = 3, seed: int = 0) -> Backbone:
    """The Keras twin of NHWCNet (ReLU fused into conv1, conv2, fc) as a Backbone with random weights."""
    from keras import layers

    rng = np.random.default_rng(seed)
    inputs = keras.Input((size, size, 3), name="input_layer")
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = layers.Conv2D(5, 3, padding="same", activation="relu", name="conv2")(h)
    h = layers.MaxPooling2D(2, name="pool")(h)
    h = layers.Flatten(name="flatten")(h)
    h = layers.Dense(6, activation="relu", name="fc")(h)
    outputs = layers.Dense(classes, activation="softmax", name="predictions")(h)
    model = keras.Model(inputs, outputs, name="tiny")
    for layer in model.layers:  # He-scaled kernels, small biases (as NHWCNet)
        if layer.weights:
            kernel, bias = (tuple(w.shape) for w in layer.weights)  # shapes only: get_weights() warns (numpy 2)
            fan_in = int(np.prod(kernel[:-1]))
            layer.set_weights(
                [(rng.normal(size=kernel) * (2 / fan_in) ** 0.5).astype("float32"), (rng.normal(size=bias) * 0.1).astype("float32")]
            )
    return Backbone(
        name="tiny",
        model=freeze(model),
        class_names=tuple("abcdefghij"[:classes]),
        input_size=(size, size),
        last_conv_layer="conv2",
        grey=0.0,
        _preprocess=lambda x: x / 127.5 - 1.0,
        _deprocess=lambda x: (x + 1.0) * 127.5,
    )


def numpy_of(variable) -> np.ndarray:
    """A Keras variable's values through its torch tensor: ``get_weights()`` / ``np.asarray(variable)`` make Keras
    call ``np.array`` on an object whose ``__array__`` lacks numpy 2's ``copy`` argument (a DeprecationWarning each)."""
    return variable.value.detach().cpu().numpy().copy()


def twin_of(backbone: Backbone) -> NHWCNet:
    """An NHWCNet with the weights of a keras_tiny backbone: HWIO kernels -> OIHW, Dense (in, out) -> (out, in)."""
    m = backbone.model
    size = backbone.input_size[0]
    classes = backbone.num_classes
    net = NHWCNet(size, classes)
    pairs = [("conv1", net.features[0]), ("conv2", net.features[2]), ("fc", net.classifier[0]), ("predictions", net.classifier[2])]
    with torch.no_grad():
        for name, mod in pairs:
            kernel, bias = (numpy_of(w) for w in m.get_layer(name).weights)
            k = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
            mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(k)))
            mod.bias.copy_(torch.from_numpy(bias))
    return net


class NCHW(nn.Module):
    """pytorch-grad-cam wants NCHW inputs: permute to the NHWC the wrapped model takes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.permute(0, 2, 3, 1))


HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def hook_count(*modules) -> int:
    """Every module hook left on these modules (and their submodules), plus torch's global module hooks."""
    import torch.nn.modules.module as mm

    n = 0
    for module in modules:
        for m in module.modules():
            n += sum(len(getattr(m, d, {})) for d in HOOK_DICTS)
    for g in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"):
        n += len(getattr(mm, g, {}))
    return n


@pytest.fixture
def tiny():
    """Builders: tiny.net(...), tiny.keras(...), tiny.twin(backbone), tiny.NCHW(model), tiny.hooks(*modules)."""
    return SimpleNamespace(net=NHWCNet, keras=keras_tiny, twin=twin_of, NCHW=NCHW, hooks=hook_count)


@pytest.fixture(scope="session")
def vgg16():
    """Keras' VGG16 architecture with random weights (about 6 s to build; 1 s a 224x224 forward on 2 cores)."""
    from labkit import models

    return models.load("vgg16", weights=None)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread, then restore the count.

    Tiny nets gain nothing from threads, and on a busy 2-core machine OpenMP's threads waiting for each
    other make a millisecond forward pass take tens of milliseconds.
    """
    from labkit.checks.base import one_thread as _one_thread

    with _one_thread():
        yield


@pytest.fixture(scope="module")
def kernel():
    """One Jupyter kernel for a test module's notebooks (tests/test_notebooks.py, tests/test_student_notebooks.py).

    Starting a kernel and importing labkit (torch, keras) costs ~10 s on the course machine; paying it once per
    module keeps those files fast. Each test resets the namespace (``%reset -f``) before a notebook, so a
    notebook that forgets an import still fails with NameError; only the module cache is shared.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.util import run_sync

    km = NotebookClient(nbformat.v4.new_notebook(), kernel_name="python3").create_kernel_manager()
    try:
        yield km
    finally:
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)
