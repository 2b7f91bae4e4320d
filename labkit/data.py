"""Images for the lab: a procedural shapes dataset, the real photos that ship offline, and loaders.

The shapes dataset is what the embedded ``minivgg`` backbone is trained on. Every image holds one object
of one of :data:`CLASSES` at a random position, scale, rotation and colour, on a cluttered background cut
from real textures and photos, with distractor strokes that belong to no class. Each image comes with the
object's ground-truth mask, so explanation maps can be scored (does the map point at the object?).

Image ``i`` of a dataset with seed ``s`` depends only on ``(s, i)``: any slice, in any order or batch
size, gives the same pixels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from skimage import data as skdata
from skimage import draw
from skimage.transform import rescale, resize
from tqdm.auto import tqdm

IMAGE_SIZE = 96
CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Object radius in pixels at IMAGE_SIZE = 96. Objects stay well inside the frame and are small
# enough that "always point at the image centre" rarely hits one (see tests/test_data.py).
_RADIUS = (11.0, 19.0)
RING_HOLE = 0.35  # the ring's hole, as a share of its radius


@dataclass(frozen=True)
class Shapes:
    """A batch of procedural images: ``images`` (N, H, W, 3) uint8 RGB, ``labels`` (N,), ``masks`` (N, H, W) bool."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASSES


@functools.lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, ...]:
    """Real textures and photos shipped by scikit-image and scikit-learn, as float32 RGB in [0, 1].

    Each one is kept at two scales so that the clutter has both fine and coarse structure.
    """
    from sklearn.datasets import load_sample_images

    grey = [skdata.brick(), skdata.grass(), skdata.gravel()]
    colour = [skdata.coffee(), skdata.rocket(), *load_sample_images().images]
    sources = [np.repeat(g[..., None], 3, axis=2) for g in grey] + list(colour)
    out = []
    for src in sources:
        src = src.astype(np.float32) / 255.0
        for scale in (0.5, 0.25):
            out.append(rescale(src, scale, channel_axis=2, anti_aliasing=True).astype(np.float32))
    return tuple(out)


def _shape_polygon(label: int, radius: float, angle: float, cy: float, cx: float):
    """Vertices (rows, cols) of a polygonal class, or None for the round ones."""
    name = CLASSES[label]
    if name == "square":
        t = np.arange(4) * np.pi / 2 + np.pi / 4
        r = np.full(4, radius)
    elif name == "triangle":
        t = np.arange(3) * 2 * np.pi / 3
        r = np.full(3, radius)
    elif name == "star":
        t = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    elif name == "cross":
        a = 0.32  # half-width of an arm, as a fraction of the radius
        ys = np.array([-1, -1, -a, -a, a, a, 1, 1, a, a, -a, -a]) * radius
        xs = np.array([-a, a, a, 1, 1, a, a, -a, -a, -1, -1, -a]) * radius
        t = np.arctan2(ys, xs)
        r = np.hypot(ys, xs)
    else:
        return None
    t = t + angle
    return cy + r * np.sin(t), cx + r * np.cos(t)


def _object_mask(label: int, radius: float, angle: float, cy: float, cx: float, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    poly = _shape_polygon(label, radius, angle, cy, cx)
    if poly is not None:
        mask[draw.polygon(poly[0], poly[1], shape=mask.shape)] = True
    else:
        mask[draw.disk((cy, cx), radius, shape=mask.shape)] = True
        if CLASSES[label] == "ring":
            # A ring's evidence peaks at its middle. With a hole of 0.55 r (6-10 px radius) a map's peak in
            # the hole was a pointing-game miss for 43% of rings; 0.35 r leaves 1-4 px beyond the 3 px tolerance.
            mask[draw.disk((cy, cx), RING_HOLE * radius, shape=mask.shape)] = False
    return mask


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    # Only textures at least as large as the image (all of them at the shapes' own 96 px).
    textures = [t for t in _textures() if min(t.shape[:2]) >= size] or [_textures()[0]]
    tex = textures[rng.integers(len(textures))]
    if min(tex.shape[:2]) < size:
        tex = rescale(tex, size / min(tex.shape[:2]) + 1e-3, channel_axis=2).astype(np.float32)
    y = rng.integers(tex.shape[0] - size + 1)
    x = rng.integers(tex.shape[1] - size + 1)
    bg = tex[y : y + size, x : x + size]
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    # Random tint and contrast, pulled towards mid-grey: clutter, but not a second object.
    tint = rng.uniform(0.6, 1.2, size=3).astype(np.float32)
    contrast = rng.uniform(0.35, 0.8)
    return np.clip(0.5 + contrast * (bg * tint - 0.5), 0.0, 1.0)


def _strokes(img: np.ndarray, rng: np.random.Generator) -> None:
    """Distractors: thin open polylines of random colour, which look like no class."""
    size = img.shape[0]
    for _ in range(rng.integers(2, 5)):
        colour = rng.uniform(0, 1, size=3)
        y, x = rng.uniform(0, size, size=2)
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(rng.integers(1, 3)):
            length = rng.uniform(0.15, 0.4) * size
            y2, x2 = y + length * np.sin(heading), x + length * np.cos(heading)
            rr, cc, val = draw.line_aa(int(y), int(x), int(y2), int(x2))
            keep = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
            rr, cc, val = rr[keep], cc[keep], val[keep, None]
            img[rr, cc] = (1 - val) * img[rr, cc] + val * colour
            y, x = y2, x2
            heading += rng.choice([-1, 1]) * rng.uniform(0.3, 1.2)  # never a right angle cross


def _draw_object(img: np.ndarray, rng: np.random.Generator, label: int, centre_box=None) -> np.ndarray:
    """Paint one object of class ``label`` into ``img`` (in place); return its mask."""
    size = img.shape[0]
    radius = rng.uniform(*_RADIUS) * size / 96.0
    margin = radius + 2
    if centre_box is None:
        # Keep the image centre off the object, so pointing at the centre is a weak baseline.
        while True:
            cy, cx = rng.uniform(margin, size - margin, size=2)
            if np.hypot(cy - size / 2, cx - size / 2) > radius:
                break
    else:
        (y0, y1), (x0, x1) = centre_box
        radius = min(radius, (y1 - y0) / 2 - 2, (x1 - x0) / 2 - 2)
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    mask = _object_mask(label, radius, rng.uniform(0, 2 * np.pi), cy, cx, size)
    # Light object on a dark surround, or dark on light, so the object is always visible.
    surround = img[mask].mean()
    hue_colour = rng.dirichlet(np.ones(3)).astype(np.float32)
    if surround < 0.5:
        colour = 0.55 + 0.45 * hue_colour / hue_colour.max()
    else:
        colour = 0.35 * hue_colour / hue_colour.max()
    shade = 1.0 + 0.08 * rng.standard_normal((int(mask.sum()), 1), dtype=np.float32)
    img[mask] = colour * shade
    return mask


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.02)
    np.clip(img, 0, 1, out=img)
    return (img * 255 + 0.5).astype(np.uint8)


def _one(seed: int, index: int, size: int) -> tuple[np.ndarray, int, np.ndarray]:
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(CLASSES)))
    img = _background(rng, size).copy()
    _strokes(img, rng)
    mask = _draw_object(img, rng, label)
    return _finish(img, rng), label, mask


def two_objects(first: str, second: str, seed: int = 0, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One image with two objects of different classes, left and right: for class-discriminative maps.

    Returns the image (H, W, 3) uint8 and the two masks (2, H, W), in the order of the names.
    """
    labels = [CLASSES.index(n) if n in CLASSES else None for n in (first, second)]
    if None in labels:
        raise ValueError(f"unknown class in ({first!r}, {second!r}): choose from {', '.join(CLASSES)}")
    rng = np.random.default_rng([seed, 2**31])
    img = _background(rng, size).copy()
    _strokes(img, rng)
    half, pad = size // 2, size // 16
    masks = np.stack([
        _draw_object(img, rng, labels[0], ((half - 3 * pad - half // 2, half - 3 * pad + half // 2), (pad, half - pad))),
        _draw_object(img, rng, labels[1], ((half + 3 * pad - half // 2, half + 3 * pad + half // 2), (half + pad, size - pad))),
    ])
    return _finish(img, rng), masks


def make_shapes(n: int, seed: int = 0, start: int = 0, size: int = IMAGE_SIZE, progress: bool = False) -> Shapes:
    """Images ``start .. start+n-1`` of the shapes dataset with this ``seed``.

    >>> batch = make_shapes(8, seed=1)
    >>> batch.images.shape, batch.labels.shape, batch.masks.shape
    ((8, 96, 96, 3), (8,), (8, 96, 96))
    """
    if n < 0 or start < 0:
        raise ValueError(f"make_shapes needs n >= 0 and start >= 0, got n={n}, start={start}")
    if size < 64:
        raise ValueError(f"make_shapes needs size >= 64 so objects are recognisable, got size={size}")
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    masks = np.empty((n, size, size), dtype=bool)
    for k in tqdm(range(n), desc="shapes", disable=not progress, leave=False):
        images[k], labels[k], masks[k] = _one(seed, start + k, size)
    return Shapes(images, labels, masks)



# ----------------------------------------------------------------------------------------------------
# A spurious cue (stage 09): a small tag, unrelated to the shape, that co-occurs with one class

CUE_SIZE = 8  # the tag's side in pixels at IMAGE_SIZE = 96: a 4 x 4 checkerboard of 2 px cells
CUE_MARGIN = 2  # pixels between the tag and the image border
CUE_CLASS = "circle"  # the class the tag co-occurs with in minivgg_spurious's training images
# minivgg_spurious's training correlation: the tag on every circle and on no other shape. A model trained with the
# tag on 95% of the circles learnt their shape from the untagged 5% too, and lost little accuracy without the tag.
CUE_P_CLASS = 1.0
CUE_P_OTHER = 0.0
CUE_SEED = 2**30  # the cue's own random stream: the image under the tag is the same with or without it


@dataclass(frozen=True)
class CuedShapes(Shapes):
    """Shapes with the tag on some images: ``cued`` (N,) bool says which, ``corners`` (N,) which corner (0-3).

    ``masks`` stay the object's masks: the tag is not part of the object.
    """

    cued: np.ndarray
    corners: np.ndarray


def cue_box(corner: int, size: int = IMAGE_SIZE) -> tuple[slice, slice]:
    """Rows and columns of the tag in ``corner`` (0 top-left, 1 top-right, 2 bottom-right, 3 bottom-left)."""
    if corner not in (0, 1, 2, 3):
        raise ValueError(f"corner must be 0 (top-left), 1 (top-right), 2 (bottom-right) or 3 (bottom-left), got {corner!r}")
    side = max(2, round(CUE_SIZE * size / IMAGE_SIZE))
    lo, hi = CUE_MARGIN, size - CUE_MARGIN - side
    y = lo if corner in (0, 1) else hi
    x = lo if corner in (0, 3) else hi
    return slice(y, y + side), slice(x, x + side)


def cue_mask(corner: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) bool: where the tag sits in ``corner``."""
    mask = np.zeros((size, size), dtype=bool)
    mask[cue_box(corner, size)] = True
    return mask


def add_cue(images: np.ndarray, corners=0) -> np.ndarray:
    """A copy of ``images`` (N, H, W, 3) or (H, W, 3) uint8 with the tag painted in each image's corner.

    ``corners`` is one corner for all images or one per image (0 top-left, 1 top-right, 2 bottom-right,
    3 bottom-left). The tag is a black-and-white checkerboard: visible on any background, like no class.
    """
    images = np.asarray(images)
    single = images.ndim == 3
    batch = (images[None] if single else images).copy()
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"add_cue takes RGB images (N, H, W, 3) or (H, W, 3), got shape {images.shape}")
    corners = np.broadcast_to(np.asarray(corners), (len(batch),))
    for k, corner in enumerate(corners):
        rows, cols = cue_box(int(corner), batch.shape[1])
        side = rows.stop - rows.start
        cell = max(1, side // 4)
        yy, xx = np.mgrid[0:side, 0:side] // cell
        batch[k, rows, cols] = np.where(((yy + xx) % 2 == 0)[..., None], 255, 0).astype(batch.dtype)
    return batch[0] if single else batch


def free_corners(masks: np.ndarray) -> np.ndarray:
    """(N, 4) int: how many object pixels the tag would cover in each corner (0 = the corner is free)."""
    size = masks.shape[1]
    return np.stack([masks[:, cue_box(c, size)[0], cue_box(c, size)[1]].sum(axis=(1, 2)) for c in range(4)], axis=1)


def make_cued_shapes(n: int, seed: int = 0, start: int = 0, size: int = IMAGE_SIZE, cue: str = "train",
                     cue_class: str = CUE_CLASS, p_class: float = CUE_P_CLASS, p_other: float = CUE_P_OTHER,
                     progress: bool = False) -> CuedShapes:
    """``make_shapes(n, seed, start, size)`` with the tag added: the very same images, only the tag differs.

    ``cue``: "train" puts it on a share ``p_class`` of the ``cue_class`` images and ``p_other`` of the others
    (minivgg_spurious's training correlation); "none" on no image; "all" on every image. Which images get the
    tag and in which corner (one the object does not touch, where there is one) depend only on (seed, index).
    """
    if cue not in ("train", "none", "all"):
        raise ValueError(f"cue must be 'train', 'none' or 'all', got {cue!r}")
    if cue_class not in CLASSES:
        raise ValueError(f"unknown cue_class {cue_class!r}: choose from {', '.join(CLASSES)}")
    shapes = make_shapes(n, seed=seed, start=start, size=size, progress=progress)
    draws = np.array([np.random.default_rng([CUE_SEED, seed, start + k]).random(5) for k in range(n)]).reshape(n, 5)
    if cue == "train":
        p = np.where(shapes.labels == CLASSES.index(cue_class), p_class, p_other)
        cued = draws[:, 0] < p
    else:
        cued = np.full(n, cue == "all")
    # The corner: a random one among those the object leaves free (all four when none is free).
    covered = free_corners(shapes.masks) if n else np.zeros((0, 4), int)
    score = np.where(covered == covered.min(axis=1, keepdims=True), draws[:, 1:], 2.0)
    corners = score.argmin(axis=1).astype(np.int64)
    images = shapes.images.copy()
    if cued.any():
        images[cued] = add_cue(images[cued], corners[cued])
    return CuedShapes(images, shapes.labels, shapes.masks, cued, corners)


# ----------------------------------------------------------------------------------------------------
# Real photos that ship offline


def _sklearn_sample(name: str) -> np.ndarray:
    from sklearn.datasets import load_sample_image

    return load_sample_image(f"{name}.jpg")


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


SAMPLE_IMAGES = {
    "chelsea": skdata.chelsea,  # a tabby cat
    "coffee": skdata.coffee,  # a cup of coffee
    "astronaut": skdata.astronaut,  # Eileen Collins
    "rocket": skdata.rocket,  # a rocket on its launch pad
    "china": functools.partial(_sklearn_sample, "china"),  # a Chinese temple
    "flower": functools.partial(_sklearn_sample, "flower"),  # a flower close up
    "grace_hopper": _grace_hopper,  # Grace Hopper in uniform
}


def sample_image(name: str) -> np.ndarray:
    """A real photo that ships with the installed packages, as (H, W, 3) uint8 RGB at its own size."""
    if name not in SAMPLE_IMAGES:
        raise ValueError(f"unknown sample image {name!r}: choose one of {', '.join(sorted(SAMPLE_IMAGES))}")
    img = np.asarray(SAMPLE_IMAGES[name]())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


# ----------------------------------------------------------------------------------------------------
# Loading a user's images


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode to (H, W, 3) float32 in [0, 255]; transparency is composited over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        # 32-bit int and float images carry no range: take the smallest usual one that holds the data.
        peak = float(arr.max()) if arr.size else 0.0
        if img.mode.startswith("I;16"):
            top = 65535.0
        else:
            top = next((t for t in (1.0, 255.0, 65535.0) if peak <= t and (t > 1.0 or img.mode == "F")), peak)
        arr = np.clip(arr / top, 0, 1) * 255.0
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.float32)
    return np.asarray(img.convert("RGB"), dtype=np.float32)


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == object or not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)) or np.iscomplexobj(arr):
        raise ValueError(f"an image array must hold real numbers, got dtype {arr.dtype}: give RGB pixels")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"the image is empty ({arr.shape[0]} x {arr.shape[1]} pixels): give an image with pixels")
    floats = np.issubdtype(arr.dtype, np.floating)
    if arr.dtype == bool:  # a mask: True is white
        rgb = arr[..., :3].astype(np.float32) * 255.0
    else:
        rgb = arr[..., :3].astype(np.float32)
    if floats and not np.isfinite(rgb).all():
        raise ValueError("the image holds NaN or infinite values: check how it was computed")
    if floats and rgb.max() <= 1.0:
        rgb = rgb * 255.0  # floats in [0, 1] are the other common convention (integers are always [0, 255])
    return np.clip(rgb, 0, 255)


def load_image(image, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """A file path (any format and mode Pillow reads) or an array, as (H, W, 3) uint8 RGB resized to ``size``.

    ``size`` is the backbone's input size (``backbone.input_size``); None keeps the image's own size.
    Arrays may be RGB, RGBA or grey; float arrays whose values are all at most 1 are read as [0, 1] and scaled
    to [0, 255] (integer arrays are always [0, 255]); boolean arrays are masks (True: white). This is the one
    place labkit converts conventions: the methods themselves take pixels in [0, 255] and refuse the rest.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no image file at {path}: check the path")
        try:
            with Image.open(path) as img:
                img.load()
                rgb = _pil_to_rgb(img)
        except Image.DecompressionBombError as exc:
            raise ValueError(f"{path} is too large to open safely ({exc}): resize it to a smaller image first") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ValueError(f"cannot read {path} as an image ({type(exc).__name__}): use a JPEG or PNG file") from None
    else:
        if image is None:
            raise ValueError("load_image needs a file path or an image array, got None")
        rgb = _array_to_rgb(image)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"the image is empty ({rgb.shape[0]} x {rgb.shape[1]} pixels): give an image with pixels")
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if rgb.shape[:2] != hw:
            rgb = resize(rgb, hw, order=1, anti_aliasing=True, preserve_range=True)
    return (np.clip(rgb, 0, 255) + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class LabelledImages:
    """Images from ``root/<class>/*``: ``images`` (N, H, W, 3) uint8, ``labels`` (N,), ``class_names``, ``paths``."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.labels)


def load_folder(root, size: int | tuple[int, int], progress: bool = True) -> LabelledImages:
    """A user's labelled images, one sub-folder per class (``root/cat/1.jpg``, ``root/dog/7.png``...).

    Classes are the sub-folder names in sorted order; every image is resized to ``size``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder at {root}: give the folder that holds one sub-folder per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{root} has no class sub-folders: put each class's images in {root}/<class name>/")
    files, labels = [], []
    for label, d in enumerate(class_dirs):
        found = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise ValueError(f"class folder {d} has no images ({', '.join(IMAGE_EXTENSIONS)}): add some or remove it")
        files += found
        labels += [label] * len(found)
    images = np.stack([load_image(p, size) for p in tqdm(files, desc=f"loading {root.name}", disable=not progress)])
    return LabelledImages(images, np.asarray(labels, dtype=np.int64), tuple(d.name for d in class_dirs), tuple(files))


def demo_images(backbone, n: int = 4, seed: int = 100) -> tuple[np.ndarray, list[str]]:
    """Images to explain in the notebooks, right for the backbone: shapes for minivgg, real photos for vgg16.

    Returns (N, H, W, 3) uint8 at the backbone's input size, and a caption for each (the true class for shapes,
    the photo's name otherwise). The same notebook cells then work with either backbone.
    """
    h, w = backbone.input_size
    if backbone.name == "minivgg":
        shapes = make_shapes(n, seed=seed, size=h)
        return shapes.images, [CLASSES[i] for i in shapes.labels]
    names = ["chelsea", "coffee", "astronaut", "rocket", "grace_hopper", "china", "flower"][:n]
    return np.stack([load_image(sample_image(name), (h, w)) for name in names]), names
