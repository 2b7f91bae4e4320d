"""Class Activation Mapping (Zhou et al., 2016): a GAP + softmax head on frozen conv features.

CAM needs a network whose last conv maps M_k are global-average-pooled and fed to one Dense softmax
layer. VGG16 is not built that way, so we bolt such a head onto a frozen backbone and train only it::

    head = train_cam_head(backbone, images, labels, class_names)   # seconds: only the head is trained
    explanation = cam(head, images)                                # target=None: the head's prediction

The class-c map is ``CAM_c = sum_k w_k^c M_k`` with ``w^c`` the head's Dense kernel column for c (the
bias is left out). Because the head sees ``GAP(M)``, averaging the map gives the head's logit back:
``mean(CAM_c) = logit_c - b_c`` — the CAM identity, which ``tests/test_cam.py`` checks.

The backbone's features up to the layer are computed once (batched, no gradient) and the pooled
(N, K) features are kept on the head (``head.features``): pass them back as ``features=`` to retrain
with other settings without running the backbone again.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import keras
import numpy as np
import torch
from keras import layers
from tqdm.auto import tqdm

from .attribution import Explanation, passes, prepare, resolve_targets, upsample
from .models import Backbone


def class_activation_map(feature_maps, weights):
    """The weighted sum over channels: ``out[n, y, x] = sum_k weights[n, k] * feature_maps[n, y, x, k]``.

    ``feature_maps`` (N, h, w, K) NHWC; ``weights`` (N, K), one weight vector per image, or (K,) for all.
    torch in, torch out; numpy in, numpy out. No ReLU, no normalisation: CAM is the raw sum.
    """
    if isinstance(feature_maps, torch.Tensor):
        lib = torch
        weights = torch.as_tensor(weights, dtype=feature_maps.dtype, device=feature_maps.device)
    else:
        lib, weights = np, np.asarray(weights)
    n, k = feature_maps.shape[0], feature_maps.shape[-1]
    if tuple(weights.shape) not in ((n, k), (k,)):
        raise ValueError(f"weights {tuple(weights.shape)} do not fit feature maps {tuple(feature_maps.shape)}: "
                         "give (N, K) or (K,) weights for (N, h, w, K) maps")
    return lib.einsum("nhwk,nk->nhw" if weights.ndim == 2 else "nhwk,k->nhw", feature_maps, weights)


def _numpy(variable) -> np.ndarray:
    """A Keras variable as a float32 numpy copy (via its torch tensor: no numpy-2 ``__array__`` warnings)."""
    value = getattr(variable, "value", variable)
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy().copy()
    return np.array(keras.ops.convert_to_numpy(variable), dtype=np.float32)


def _conv_layer(backbone: Backbone, layer: str | None) -> str:
    layer = backbone.last_conv_layer if layer is None else layer
    found = backbone.layer(layer)  # one-line error naming the layers when unknown
    if not isinstance(found, layers.Conv2D):
        raise ValueError(f"CAM needs a conv layer's feature maps, and {layer!r} is a {type(found).__name__}: "
                         f"choose one of {', '.join(backbone.conv_layers())}")
    return layer


def _feature_model(backbone: Backbone, layer: str) -> keras.Model:
    cache = backbone.__dict__.setdefault("_cam_feature_models", {})
    if layer not in cache or cache[layer][0] is not backbone.model:  # a keras.Model costs milliseconds: build once
        sub = keras.Model(backbone.model.inputs[0], backbone.layer(layer).output, name=f"{backbone.name}_{layer}")
        cache[layer] = (backbone.model, sub)
    return cache[layer][1]


def pooled_features(backbone: Backbone, images, layer: str | None = None, batch_size: int = 32,
                    progress: bool = True) -> np.ndarray:
    """GAP of the frozen feature maps of ``layer`` for every image: (N, K) float32, one batched no-grad pass.

    Only the pooled features are kept: they are all the head needs, and they are h*w times smaller than
    the maps (196 times for VGG16's block5_conv3).
    """
    layer = _conv_layer(backbone, layer)
    images = backbone.check_images(images)
    sub = _feature_model(backbone, layer)
    out = []
    with torch.no_grad():
        for s in tqdm(range(0, len(images), batch_size), desc=f"{layer} features", disable=not progress, leave=False):
            out.append(sub(backbone.tensor(images[s : s + batch_size])).mean(dim=(1, 2)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, int(backbone.layer(layer).output.shape[-1])), np.float32)


@dataclass
class CAMHead:
    """A frozen backbone, one of its conv layers, and a Dense softmax head on that layer's GAP features.

    ``model`` is a Keras model (K,) -> (C,) probabilities whose Dense layer acts on the RAW pooled
    features, so its kernel columns are the CAM weights.
    """

    backbone: Backbone
    layer: str
    model: keras.Model
    class_names: tuple[str, ...]
    accuracy: float | None = None  # on the training images
    features: np.ndarray | None = field(default=None, repr=False)  # (N, K) pooled training features: the cache
    labels: np.ndarray | None = field(default=None, repr=False)
    history: dict | None = field(default=None, repr=False)

    @property
    def dense(self) -> layers.Dense:
        return self.model.layers[-1]

    @property
    def weights(self) -> np.ndarray:
        """(K, C): column c holds the CAM weights of class c."""
        return _numpy(self.dense.kernel)

    @property
    def bias(self) -> np.ndarray:
        return _numpy(self.dense.bias)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def logits_of_features(self, pooled) -> np.ndarray:
        return np.asarray(pooled, np.float32) @ self.weights + self.bias

    def logits(self, images, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """(N, C) pre-softmax scores of the head for RGB images."""
        return self.logits_of_features(pooled_features(self.backbone, images, self.layer, batch_size, progress))

    def predict(self, images, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """(N, C) class probabilities of the head for RGB images."""
        z = self.logits(images, batch_size, progress)
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    @classmethod
    def from_weights(cls, backbone: Backbone, layer: str, kernel, bias, class_names=None) -> "CAMHead":
        """A head with given Dense weights (K, C) and bias (C,) — for known answers and for teaching."""
        layer = _conv_layer(backbone, layer)
        kernel = np.asarray(kernel, np.float32)
        k = int(backbone.layer(layer).output.shape[-1])
        if kernel.ndim != 2 or kernel.shape[0] != k or np.shape(bias) != (kernel.shape[1],):
            raise ValueError(f"layer {layer!r} has {k} channels: give a ({k}, C) kernel and a (C,) bias, "
                             f"got {kernel.shape} and {np.shape(bias)}")
        names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(kernel.shape[1]))
        model = _head_model(k, kernel.shape[1])
        model.layers[-1].set_weights([kernel, np.asarray(bias, np.float32)])
        return cls(backbone, layer, model, names)


    @classmethod
    def from_model(cls, backbone: Backbone, cam_model: keras.Model, layer: str | None = None,
                   class_names=None) -> "CAMHead":
        """The head of a Keras CAM model (frozen base -> GAP -> Dense softmax, as stage 04 builds it):
        its last Dense layer's kernel and bias, on ``layer`` (default: the backbone's last conv layer)."""
        dense = [l for l in getattr(cam_model, "layers", []) if isinstance(l, layers.Dense)]
        if not dense:
            raise ValueError("cam_model has no Dense layer: build it as GAP -> Dense(num_classes, softmax)")
        layer = backbone.last_conv_layer if layer is None else layer
        return cls.from_weights(backbone, layer, _numpy(dense[-1].kernel), _numpy(dense[-1].bias), class_names)


def _head_model(k: int, c: int, seed: int = 0) -> keras.Model:
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential([keras.Input((k,)), layers.Dense(c, activation="softmax", kernel_initializer=init,
                                                             name="cam_dense")], name="cam_head")


class _EpochBar(keras.callbacks.Callback):
    def __init__(self, epochs: int, progress: bool):
        super().__init__()
        self.bar = tqdm(total=epochs, desc="CAM head", disable=not progress, leave=False)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.update(1)
        if logs:
            self.bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.3f}", acc=f"{logs.get('accuracy', float('nan')):.2f}")

    def on_train_end(self, logs=None):
        self.bar.close()


def train_cam_head(backbone: Backbone, images, labels, class_names=None, layer: str | None = None, epochs: int = 100,
                   batch_size: int = 32, learning_rate: float = 0.01, seed: int = 0, progress: bool = True,
                   features=None) -> CAMHead:
    """Train a GAP + Dense(softmax) head on the frozen features of ``layer`` (default: the last conv layer).

    ``images`` RGB (N, H, W, 3) at the backbone's size, ``labels`` (N,) class indices into ``class_names``
    (default: "0", "1", ...). ``features``: the (N, K) pooled features of these images from an earlier
    head (``head.features``), to skip the backbone. Deterministic for a seed; the global torch random
    state (which Keras' ``fit`` shuffles with on this backend) is left as it was.

    The head is fitted on centred features divided by their overall spread (well conditioned whatever
    the features' scale), and that is then folded into the Dense weights, so the returned head acts on the raw
    pooled features, as the CAM identity needs: W = W_z / s, b = b_z - (m / s) @ W_z.
    """
    layer = _conv_layer(backbone, layer)
    labels = np.asarray(labels)
    n = len(images) if features is None else len(features)
    if features is None:
        images = backbone.check_images(images)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"got {n} images but labels of shape {labels.shape}: give one class index per image")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}: map names to indices first")
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(int(labels.max(initial=0)) + 1))
    c = len(names)
    if c < 2:
        raise ValueError(f"a softmax head needs at least 2 classes, got {c}: add images of another class")
    if n == 0 or labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must be class indices 0..{c - 1} for {c} class names, got range "
                         f"{labels.min(initial=0)}..{labels.max(initial=0)} over {n} images")
    k = int(backbone.layer(layer).output.shape[-1])
    if features is None:
        features = pooled_features(backbone, images, layer, batch_size, progress)
    features = np.asarray(features, np.float32)
    if features.shape != (n, k):
        raise ValueError(f"features must be ({n}, {k}) pooled {layer} features, got {features.shape}: pass head.features")

    # Centre each channel, but scale all of them by ONE number: dividing each channel by its own spread
    # inflates the weights of near-constant channels, whose spatial noise then swamps the maps (pointing
    # game of CAM on minivgg: 0.31 that way, 0.44 this way; bench/pointing.py).
    mean = features.mean(0)
    spread = float(features.std())
    std = np.full(k, spread if spread > 1e-6 else 1.0, np.float32)
    z = (features - mean) / std

    train = _head_model(k, c, seed)
    train.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    # On the torch backend Keras shuffles arrays with torch's global CPU generator (a RandomSampler):
    # seed it for this fit only, and give the caller's random state back untouched afterwards.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        # Keras' own logs conversion trips a numpy-2 DeprecationWarning every epoch: noise, not ours
        warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept", category=DeprecationWarning)
        history = train.fit(z, labels, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0,
                            callbacks=[_EpochBar(epochs, progress)])

    wz, bz = (_numpy(v).astype(np.float64) for v in (train.layers[-1].kernel, train.layers[-1].bias))
    kernel = (wz / std[:, None]).astype(np.float32)
    bias = (bz - (mean / std) @ wz).astype(np.float32)
    head = CAMHead.from_weights(backbone, layer, kernel, bias, names)
    head.features, head.labels = features, labels
    head.history = {key: [float(v) for v in vals] for key, vals in history.history.items()}
    head.accuracy = float((head.logits_of_features(features).argmax(1) == labels).mean())
    return head


def cam(head: CAMHead, images, target=None, batch_size: int = 32, progress: bool = False,
        preprocessed: bool = False) -> Explanation:
    """Class activation maps of ``images`` for ``target`` (default: the head's predicted class).

    ``raw`` is (N, h, w) at the layer's resolution, ``maps`` the same upsampled to the input size
    (bilinear, scikit-image). Unnormalised: ``raw[n].mean()`` is the head's logit minus its bias.
    """
    if not isinstance(head, CAMHead):
        raise ValueError(f"cam needs a CAMHead, got {type(head).__name__}: train one with "
                         "train_cam_head(backbone, images, labels)")
    bb = head.backbone
    images = bb.check_images(images, pixels=not preprocessed)
    sub = _feature_model(bb, head.layer)
    w = torch.as_tensor(head.weights, device=bb.device)
    b = torch.as_tensor(head.bias, device=bb.device)
    raws, targets = [], []
    with torch.no_grad():
        for part, part_target in tqdm(passes(len(images), batch_size, target), desc="CAM", disable=not progress,
                                      leave=False):
            x = prepare(bb, images[part], preprocessed=preprocessed)  # one batch on the device at a time
            maps = sub(x).float()  # (B, h, w, K)
            logits = maps.mean(dim=(1, 2)) @ w + b
            tb = resolve_targets(part_target, logits)
            raws.append(class_activation_map(maps, w.T[tb]).cpu().numpy())
            targets.append(tb.cpu().numpy())
    raw = np.concatenate(raws).astype(np.float32)
    return Explanation("cam", upsample(raw, bb.input_size), np.concatenate(targets), raw)
