"""labkit's own code (and the tests' tiny-model builders) emits no warnings: `make test` stays quiet enough that a
new warning stands out. Keras' numpy-2 warning for get_weights() is filtered, narrowly, in pyproject.toml."""

import warnings

import numpy as np


def test_tiny_builders_and_every_method_are_warning_free(tiny):
    from labkit import gradcam, guided_backprop, keras_to_torch, occlusion, saliency

    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bb = tiny.keras(seed=5)
        tiny.twin(bb)
        twin = keras_to_torch.to_torch(bb.model)
        saliency.saliency(bb, x)
        gradcam.gradcam(bb, x)
        occlusion.occlusion(bb, x, size=4, stride=4, progress=False)
        guided_backprop.guided_gradcam(bb, x)
        guided_backprop.guided_backprop(twin, bb.tensor(x), preprocessed=True)
        bb.top_k(x[0])
