"""Backbones: the embedded ``minivgg`` (ships in ``data/``) and the course's ``vgg16`` (ImageNet weights).

``load(name)`` returns a :class:`Backbone`: the frozen Keras model together with everything the methods
need to use it — preprocess/deprocess, class names, input size, last conv layer, and the value of a
"medium grey" pixel after preprocessing (0 for both, which is what occlusion fills with).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import torch
from keras import layers
from tqdm.auto import tqdm

from . import WeightsError
from . import data as lkdata

DATA_DIR = Path(os.environ.get("LABKIT_DATA", Path(__file__).resolve().parent.parent / "data"))
MINIVGG_WEIGHTS = "minivgg.weights.h5"
MINIVGG_META = "minivgg.json"

# The course's model: Keras' VGG16 with top. Keras publishes the md5 of the file, not its sha256;
# an instructor who has fetched it once can pin the sha256 that `labkit fetch` prints.
VGG16_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
VGG16_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + VGG16_FILE
VGG16_MD5 = "64373286793e3c8b2b4e3219cbf3544b"
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)

BACKBONES = ("minivgg", "vgg16")


def device() -> torch.device:
    """Where Keras (torch backend) puts models and tensors: CUDA when torch sees a GPU, else the CPU."""
    from keras.src.backend.torch.core import get_device

    return torch.device(get_device())


# ----------------------------------------------------------------------------------------------------
# The Backbone object


def _minivgg_preprocess(x):
    return x / 127.5 - 1.0


def _minivgg_deprocess(x):
    return (x + 1.0) * 127.5


def _caffe_preprocess(x):
    """Keras' VGG16 preprocessing ('caffe'): RGB -> BGR, ImageNet mean subtracted, no scaling."""
    if isinstance(x, torch.Tensor):
        return x.flip(-1) - torch.as_tensor(CAFFE_MEAN_BGR, device=x.device, dtype=x.dtype)
    return x[..., ::-1] - CAFFE_MEAN_BGR


def _caffe_deprocess(x):
    if isinstance(x, torch.Tensor):
        return (x + torch.as_tensor(CAFFE_MEAN_BGR, device=x.device, dtype=x.dtype)).flip(-1)
    return (x + CAFFE_MEAN_BGR)[..., ::-1]


@dataclass
class Backbone:
    """A frozen Keras image classifier with what it takes to feed it and to read its answers."""

    name: str
    model: keras.Model
    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    last_conv_layer: str
    grey: float
    _preprocess: Callable = field(repr=False)
    _deprocess: Callable = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return device()

    def check_images(self, images, pixels: bool = True) -> np.ndarray | torch.Tensor:
        """(H, W, 3) or (N, H, W, 3) at the input size, as a batch (numpy, or torch for a tensor); anything else is
        a one-line ValueError naming the fix. The one place every method's images are checked.

        ``pixels=True``: RGB pixels in [0, 255] of any real dtype (uint8 is checked for free). Floats whose values
        all lie in [0, 1] (but not all 0) are refused rather than guessed at: multiply them by 255 (or pass them
        through ``labkit.data.load_image``, which rescales them). Out-of-range values (preprocessed input given as
        pixels, say) and booleans are refused. ``pixels=False``: a preprocessed batch, any finite values.
        NaN or infinite values are refused either way.
        """
        images = as_batch_array(images)
        if images.ndim == 3:
            images = images[None]
        h, w = self.input_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (h, w, 3):
            raise ValueError(
                f"{self.name} takes RGB images of shape (N, {h}, {w}, 3) or ({h}, {w}, 3), got {tuple(images.shape)}: "
                f"resize with labkit.data.load_image(image, {h})"
            )
        check_values(images, pixels)
        return images
    def preprocess(self, images):
        """RGB pixels in [0, 255] (N, H, W, 3) to model input; numpy in, numpy out; torch in, torch out."""
        images = self.check_images(images)
        if isinstance(images, torch.Tensor):
            return self._preprocess(images.float())
        return np.ascontiguousarray(self._preprocess(np.asarray(images, dtype=np.float32)), dtype=np.float32)

    def deprocess(self, x) -> np.ndarray:
        """Model input back to displayable uint8 RGB."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        return np.clip(self._deprocess(np.asarray(x, dtype=np.float32)) + 0.5, 0, 255).astype(np.uint8)

    def tensor(self, images) -> torch.Tensor:
        """Preprocessed images as a float32 torch tensor on the backbone's device."""
        if isinstance(images, torch.Tensor):
            return self.preprocess(images.to(self.device))
        return torch.from_numpy(self.preprocess(images)).to(self.device)

    def predict(self, images, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Class probabilities (N, num_classes) for RGB images."""
        images = self.check_images(images)
        out = []
        starts = range(0, len(images), batch_size)
        with torch.no_grad():
            for s in tqdm(starts, desc=f"{self.name} predict", disable=not progress, leave=False):
                out.append(self.model(self.tensor(images[s : s + batch_size])).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def top_k(self, image, k: int = 5) -> list[tuple[int, str, float]]:
        """The k most probable classes of one image: (index, name, probability)."""
        probs = self.predict(image)[0]
        order = np.argsort(probs)[::-1][:k]
        return [(int(i), self.class_names[i], float(probs[i])) for i in order]

    def layer(self, name: str) -> keras.layers.Layer:
        """A layer by name, or a one-line error that lists the names."""
        try:
            return self.model.get_layer(name)
        except ValueError:
            names = ", ".join(l.name for l in self.model.layers)
            raise ValueError(f"{self.name} has no layer {name!r}: choose one of {names}") from None

    def conv_layers(self) -> list[str]:
        return [l.name for l in self.model.layers if isinstance(l, layers.Conv2D)]


def as_batch_array(images) -> np.ndarray | torch.Tensor:
    """A torch tensor as it is; any array-like (numpy, list, tuple) as a numpy array; anything else a ValueError."""
    if isinstance(images, torch.Tensor):
        return images
    if images is None or isinstance(images, (str, bytes, os.PathLike, dict, set)):
        raise ValueError(
            f"images must be an array of RGB pixels, (H, W, 3) or (N, H, W, 3), got {type(images).__name__}: "
            "read a file with labkit.data.load_image(path, backbone.input_size)"
        )
    try:
        arr = np.asarray(images)
    except (ValueError, TypeError) as exc:  # ragged lists, mixed objects
        raise ValueError(f"images must be one array of same-sized RGB images (N, H, W, 3): {exc}") from None
    if arr.dtype == object or not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
        raise ValueError(
            f"images must be an array of numbers, got dtype {arr.dtype}: stack same-sized images with np.stack(images)"
        )
    return arr


def check_values(images, pixels: bool = True) -> None:
    """Refuse booleans, complex numbers, NaN and infinity, and (``pixels``) values outside [0, 255] or floats in [0, 1]."""
    dtype = images.dtype
    if dtype in (bool, torch.bool):
        raise ValueError(
            "images are boolean (a mask?), not pixels: give RGB pixels in [0, 255] (e.g. mask.astype(np.uint8) * 255)"
        )
    empty = images.size == 0 if isinstance(images, np.ndarray) else images.numel() == 0
    if dtype in (np.uint8, torch.uint8) or empty:
        return  # uint8 is always in range; an empty batch is refused where it is explained
    if np.iscomplexobj(images) if isinstance(images, np.ndarray) else images.is_complex():
        raise ValueError("images are complex numbers: give real RGB pixels in [0, 255]")
    if isinstance(images, torch.Tensor) and images.device.type != "cpu":
        lo, hi = (float(v) for v in torch.aminmax(images.detach()))  # one pass, one sync; NaN propagates
    elif isinstance(images, torch.Tensor):  # numpy's min/max on the same memory: 10-20x faster than torch's on a CPU
        view = images.detach().resolve_conj().resolve_neg().numpy() if images.dtype != torch.bfloat16 else images.float().numpy()
        lo, hi = float(view.min()), float(view.max())
    else:
        lo, hi = float(images.min()), float(images.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("images hold NaN or infinite values: check how they were computed (np.isfinite(images).all())")
    if not pixels:
        return
    if lo < 0 or hi > 255:
        raise ValueError(
            f"pixels must be in [0, 255], got values in [{lo:.4g}, {hi:.4g}]: give RGB pixels "
            "(already preprocessed? pass preprocessed=True)"
        )
    is_float = images.is_floating_point() if isinstance(images, torch.Tensor) else np.issubdtype(dtype, np.floating)
    if is_float and 0 < hi <= 1:
        raise ValueError(
            "pixels are floats in [0, 1], labkit takes [0, 255]: multiply by 255 (or use labkit.data.load_image(image))"
        )


def freeze(model: keras.Model) -> keras.Model:
    """Make every weight non-trainable (on the torch backend this sets requires_grad=False).

    Frozen weights are what lets gradients w.r.t. the *input* be taken cleanly, and it stops a student's
    experiment from touching the backbone.
    """
    model.trainable = False
    return model


# ----------------------------------------------------------------------------------------------------
# minivgg: the embedded backbone

MINIVGG_WIDTHS = (8, 16, 32, 64, 128)
MINIVGG_CONVS = (2, 2, 3, 3, 3)  # as in VGG16
MINIVGG_FC = 256


def build_minivgg(
    input_size: int = lkdata.IMAGE_SIZE,
    num_classes: int = len(lkdata.CLASSES),
    widths=MINIVGG_WIDTHS,
    fc: int = MINIVGG_FC,
) -> keras.Model:
    """VGG16's architecture with top, narrower: the same layer names, ReLU fused into the convs.

    He initialisation, not Keras' default Glorot: with 15 ReLU layers and no batch norm, Glorot halves
    the signal's variance at every layer and training often never leaves chance.
    """
    init = "he_uniform"
    inputs = keras.Input((input_size, input_size, 3), name="input_layer")
    x = inputs
    for b, (width, n_convs) in enumerate(zip(widths, MINIVGG_CONVS), start=1):
        for i in range(1, n_convs + 1):
            x = layers.Conv2D(width, 3, padding="same", activation="relu", kernel_initializer=init, name=f"block{b}_conv{i}")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(fc, activation="relu", kernel_initializer=init, name="fc1")(x)
    x = layers.Dense(fc, activation="relu", kernel_initializer=init, name="fc2")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="minivgg")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


MINIVGG_META_KEYS = ("classes", "input_size", "widths", "fc", "sha256")
_RESTORE = "restore it with `git checkout data/` (or retrain with `make weights`)"


def minivgg_metadata(name: str = "minivgg") -> dict:
    """``data/<name>.json``, checked: a missing file, invalid JSON or a missing key is one line naming the file."""
    path = DATA_DIR / f"{name}.json"
    if not path.is_file():
        raise WeightsError(f"no {path}: the bundled {name} is missing; run `{_train_command(name)}` to train it")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}): {_RESTORE}") from None
    missing = [k for k in MINIVGG_META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise WeightsError(f"{path} lacks {', '.join(missing)}: {_RESTORE}")
    return meta


def _h5_problem(path: Path, layout: Callable[["h5py.File"], str | None]) -> str | None:
    """Why ``path`` is not a usable weights file (None when it opens and ``layout`` finds nothing wrong).

    Opening an HDF5 file reads its header and group index only (milliseconds, also for VGG16's 528 MB).
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return layout(f)
    except OSError as exc:
        return f"not an HDF5 weights file ({str(exc).split('(')[0].strip() or type(exc).__name__})"


def _minivgg_layout(f) -> str | None:
    # Keras 3's .weights.h5: layers/<layer>/vars/<i>; minivgg has 13 convs and 3 dense layers.
    if "layers" not in f:
        return "not a Keras 3 .weights.h5 file (no 'layers' group)"
    names = list(f["layers"].keys())
    convs = sum(n.startswith("conv2d") for n in names)
    dense = sum(n.startswith("dense") for n in names)
    if (convs, dense) != (13, 3):
        return f"holds {convs} conv and {dense} dense layers, minivgg has 13 and 3"
    return None


def minivgg_problem(path: Path | None = None, name: str = "minivgg") -> str | None:
    """Why minivgg's (or a variant's) weights (default: the bundled ones) cannot be loaded, or None — cheap, for
    `labkit info`."""
    bundled = path is None
    path = DATA_DIR / f"{name}.weights.h5" if bundled else Path(path)
    if not path.is_file():
        return f"no file at {path}"
    if bundled:
        try:
            meta = minivgg_metadata(name)
        except WeightsError as exc:
            return str(exc)
        if sha256_of(path) != meta["sha256"]:
            return f"{path} does not match the sha256 in {name}.json"
    return _h5_problem(path, _minivgg_layout)


def variants() -> tuple[str, ...]:
    """minivgg's variants shipped in ``data/`` (stages 08 and 09): each is found by its ``data/<name>.json``."""
    return tuple(sorted(p.name[: -len(".json")] for p in DATA_DIR.glob("minivgg_*.json")))


def _train_command(name: str) -> str:
    return "make weights" if name == "minivgg" else f"python -m labkit.train --variant {name}"


def minivgg_backbone(model: keras.Model, class_names=lkdata.CLASSES, name: str = "minivgg") -> Backbone:
    """Wrap a minivgg-shaped Keras model (trained or not) as a frozen Backbone (``name``: which variant)."""
    size = int(model.input_shape[1])
    return Backbone(
        name=name,
        model=freeze(model),
        class_names=tuple(class_names),
        input_size=(size, size),
        last_conv_layer="block5_conv3",
        grey=0.0,  # mid-grey 127.5 maps to 0
        _preprocess=_minivgg_preprocess,
        _deprocess=_minivgg_deprocess,
    )


def _load_minivgg(weights="bundled", name: str = "minivgg") -> Backbone:
    if weights is None:  # the untrained architecture, for tests
        return minivgg_backbone(build_minivgg(), name=name)
    meta = minivgg_metadata(name)
    model = build_minivgg(meta["input_size"], len(meta["classes"]), tuple(meta["widths"]), meta["fc"])
    path = DATA_DIR / f"{name}.weights.h5" if weights == "bundled" else Path(weights)
    if not path.is_file():
        raise WeightsError(f"no {name} weights at {path}: run `{_train_command(name)}` to train them")
    if weights == "bundled" and sha256_of(path) != meta["sha256"]:
        raise WeightsError(f"{path} does not match the sha256 in {name}.json: {_RESTORE}")
    fix = _RESTORE if weights == "bundled" else "give a file written by minivgg's model.save_weights"
    _load_weights(model, path, name, _minivgg_layout, fix)
    return minivgg_backbone(model, meta["classes"], name)


def _refuse_unusable(path: Path, what: str, layout, fix: str, problem: str | None = None) -> None:
    """One line naming the file and the fix when ``path`` is not usable (checked cheaply before building a model)."""
    problem = problem or _h5_problem(path, layout)
    if problem is not None:
        raise WeightsError(f"{path} is not usable as {what} weights: {problem}; {fix}")


def _load_weights(model: keras.Model, path: Path, what: str, layout, fix: str) -> None:
    """``model.load_weights(path)``; what h5py or Keras say about a bad file's content becomes one line."""
    _refuse_unusable(path, what, layout, fix)
    try:
        model.load_weights(path)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _refuse_unusable(path, what, layout, fix, problem=first)


# ----------------------------------------------------------------------------------------------------
# vgg16: the course's model


def keras_cache_dir() -> Path:
    """Keras' own cache folder (``$KERAS_HOME/models``, default ``~/.keras/models``), where VGG16 weights live."""
    from keras.src.backend.config import keras_home

    return Path(os.environ.get("KERAS_HOME") or keras_home()) / "models"


def vgg16_cached_path() -> Path:
    return keras_cache_dir() / VGG16_FILE


def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names bundled with torchvision (Keras' decode_predictions downloads them)."""
    from torchvision.models import VGG16_Weights

    return tuple(VGG16_Weights.IMAGENET1K_V1.meta["categories"])


def check_sha256(sha256: str | None) -> str | None:
    """A pinned sha256 as 64 lowercase hex digits (None: none pinned); anything else is a one-line error."""
    if sha256 is None or sha256 == "":
        return None
    hexdigits = sha256.strip().lower()
    if len(hexdigits) != 64 or any(ch not in "0123456789abcdef" for ch in hexdigits):
        raise WeightsError(f"--sha256 / LABKIT_VGG16_SHA256 must be 64 hex digits (as `labkit fetch` prints), got {sha256!r}")
    return hexdigits


def _check_hash(path: Path, sha256: str | None, source: str) -> None:
    """Verify ``path`` (a copy of ``source``) against a pinned sha256, or Keras' published md5 when none is pinned."""
    if sha256:
        digest = sha256_of(path)
        if digest != sha256:
            raise WeightsError(f"checksum mismatch for {source}: sha256 {digest}, expected {sha256}")
    else:
        h = hashlib.md5()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != VGG16_MD5:
            raise WeightsError(
                f"checksum mismatch for {source}: md5 {h.hexdigest()}, expected Keras' {VGG16_MD5} "
                "(pin another file's sha256 with --sha256)"
            )


# A partial download not written to for this long belongs to a fetch that was killed: the next fetch removes it.
STALE_PART_SECONDS = 600


def _remove_stale_parts(folder: Path) -> None:
    now = time.time()
    for part in folder.glob(f".{VGG16_FILE}.*.part"):
        try:
            if now - part.stat().st_mtime > STALE_PART_SECONDS:
                part.unlink()
        except OSError:  # gone already, or not ours to remove
            pass


def fetch_vgg16(source: str | None = None, sha256: str | None = None, timeout: float = 10.0, progress: bool = True) -> Path:
    """Put VGG16's ImageNet weights in Keras' cache (where ``keras.applications.VGG16`` looks) and verify them.

    ``source`` is a URL or a local file (default: Keras' download address, or ``LABKIT_VGG16_URL``).
    ``sha256`` pins the file's checksum (default ``LABKIT_VGG16_SHA256``; without one, Keras' md5 is checked);
    it is checked for form before anything is downloaded.
    The file is written under a temporary name and moved into place only once it is complete and
    verified, so a failed or interrupted transfer never leaves a half-written file in the cache; the
    partial files of a fetch killed outright are removed by the next one.
    """
    source = source or os.environ.get("LABKIT_VGG16_URL") or VGG16_URL
    sha256 = check_sha256(sha256 or os.environ.get("LABKIT_VGG16_SHA256") or None)
    if "://" not in source and not Path(source).is_file():
        raise WeightsError(f"no weights file at {source}: check the path")
    dest = vgg16_cached_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(dest.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{VGG16_FILE}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            if "://" not in source:
                with open(source, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
            else:
                _download(source, out, timeout, progress)
        _check_hash(tmp, sha256, source)
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def _download(url: str, out, timeout: float, progress: bool) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            got = 0
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=VGG16_FILE, disable=not progress) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if isinstance(exc, WeightsError):
            raise
        raise WeightsError(f"could not download {url} ({getattr(exc, 'reason', exc)})") from None
    if total and got != total:
        raise WeightsError(f"download of {url} was cut short: {got} of {total} bytes")


def _vgg16_layout(f) -> str | None:
    """Keras' published VGG16 file (the legacy h5 layout): its layer names, and the classifier's shape."""
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs.get("layer_names", [])]
    if not names:
        if "layers" in f:
            return "a Keras 3 .weights.h5 file (minivgg's format?), not VGG16's weights"
        return "no 'layer_names': not a Keras VGG16 weights file"
    missing = [n for n in ("block1_conv1", "block5_conv3", "fc1", "fc2", "predictions") if n not in names]
    if missing:
        return f"no layer {missing[0]!r}: not VGG16's weights"
    kernels = [f["predictions"][k] for k in f["predictions"].attrs.get("weight_names", [])]
    if not kernels or tuple(kernels[0].shape) != (4096, 1000):
        return "its predictions layer is not VGG16's 4096 x 1000"
    return None


def vgg16_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable VGG16 weights file, or None (cheap: opens the file, reads no weights)."""
    path = Path(path)
    if not path.is_file():
        return f"no file at {path}"
    return _h5_problem(path, _vgg16_layout)


def _vgg16_weights_path(weights) -> tuple[Path | None, str]:
    """(the weights file, what to do if it is unusable)."""
    if weights is None:
        return None, ""
    if weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"no VGG16 weights file at {path}: check the path")
        return path, "give VGG16's ImageNet weights file (vgg16_weights_tf_dim_ordering_tf_kernels.h5)"
    env = os.environ.get("LABKIT_VGG16_WEIGHTS")
    if env:
        if not Path(env).is_file():
            raise WeightsError(f"LABKIT_VGG16_WEIGHTS={env} is not a file: fix or unset it")
        return Path(env), "point LABKIT_VGG16_WEIGHTS at VGG16's ImageNet weights file, or unset it"
    cached = vgg16_cached_path()
    fix = f"delete it and run `labkit fetch vgg16` (or `labkit fetch vgg16 --from COPY`)"
    if cached.is_file():
        return cached, fix
    try:
        return fetch_vgg16(timeout=10.0), fix
    except WeightsError as exc:
        raise WeightsError(
            f"VGG16's ImageNet weights are not cached and {exc}: run `labkit fetch vgg16` on a machine with internet, "
            "or name a local copy with load('vgg16', weights=PATH) / LABKIT_VGG16_WEIGHTS=PATH"
        ) from None


def _load_vgg16(weights="imagenet") -> Backbone:
    path, fix = _vgg16_weights_path(weights)
    if path is not None:
        _refuse_unusable(path, "VGG16", _vgg16_layout, fix)  # before building the model (seconds)
    model = keras.applications.VGG16(weights=None, include_top=True)
    if path is not None:
        _load_weights(model, path, "VGG16", _vgg16_layout, fix)
    return Backbone(
        name="vgg16",
        model=freeze(model),
        class_names=imagenet_classes(),
        input_size=(224, 224),
        last_conv_layer="block5_conv3",
        grey=0.0,  # the ImageNet mean colour maps to 0 under caffe preprocessing
        _preprocess=_caffe_preprocess,
        _deprocess=_caffe_deprocess,
    )


def load(name: str = "minivgg", weights="default") -> Backbone:
    """A frozen backbone: ``minivgg`` (bundled), one of its :func:`variants` (bundled), or ``vgg16`` (ImageNet
    weights; ``weights=None`` for random ones).

    ``weights`` may also name a weights file.
    """
    if name == "minivgg" or name in variants():
        return _load_minivgg("bundled" if weights == "default" else weights, name)
    if name == "vgg16":
        return _load_vgg16("imagenet" if weights == "default" else weights)
    raise ValueError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES + variants())}")


def backbone_state(name: str) -> str:
    """Where each backbone's weights are and whether they are usable (each file opened, cheaply) — for `labkit info`."""
    if name == "minivgg" or name in variants():
        if name != "minivgg" and not (DATA_DIR / f"{name}.weights.h5").is_file():
            return f"missing (run `{_train_command(name)}`)"
        problem = minivgg_problem(name=name)
        return "bundled" if problem is None else f"UNUSABLE: {problem} ({_RESTORE})"
    env = os.environ.get("LABKIT_VGG16_WEIGHTS")
    if env:
        where, fix = f"local file {env}", "point LABKIT_VGG16_WEIGHTS at VGG16's weights or unset it"
        path = Path(env)
    elif vgg16_cached_path().is_file():
        path = vgg16_cached_path()
        where, fix = f"cached at {path}", "delete it and run `labkit fetch vgg16`"
    else:
        return "missing (run `labkit fetch vgg16`)"
    problem = vgg16_problem(path)
    return where if problem is None else f"{where} UNUSABLE: {problem} ({fix})"


def evaluate(backbone: Backbone, n: int = 2000, seed: int = 1, progress: bool = True) -> float:
    """Top-1 accuracy on ``n`` freshly generated shapes images (seed 1 is never used for training)."""
    if not backbone.name.startswith("minivgg"):
        raise ValueError("evaluate runs on the procedural shapes dataset, which only minivgg was trained on")
    test = lkdata.make_shapes(n, seed=seed, size=backbone.input_size[0], progress=progress)
    probs = backbone.predict(test.images, batch_size=128, progress=progress)
    return float((probs.argmax(1) == test.labels).mean())
