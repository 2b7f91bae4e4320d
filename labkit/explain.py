"""`labkit explain IMAGE --method M`: explain one image from the shell and write the figure.

IMAGE is an image file or the name of a photo that ships offline (``chelsea``, ``coffee``...); for minivgg
it may also be ``shapes:N``, image N of the test shapes (seed 1).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

# Only the standard library at the top: `labkit explain --help` must not wait for numpy, torch or Keras
# (see labkit/cli.py).

METHODS = ("occlusion", "saliency", "cam", "gradcam", "guided_backprop", "guided_gradcam")


def method_name(name: str) -> str:
    """A method's name in either spelling: ``guided-backprop`` (the shell's) or ``guided_backprop``."""
    return name.strip().lower().replace("-", "_")


def load_input(backbone, spec: str):
    """The image to explain, (H, W, 3) uint8 at the backbone's size."""
    from . import data

    if spec.startswith("shapes:"):
        if backbone.name != "minivgg":
            raise ValueError("shapes:N images are for minivgg: give an image file or a sample name for vgg16")
        number = spec.split(":", 1)[1]
        if not number.isdigit():
            raise ValueError(f"{spec!r}: N in shapes:N is an image number 0, 1, 2...: e.g. shapes:3")
        return data.make_shapes(1, seed=1, start=int(number)).images[0]
    if spec in data.SAMPLE_IMAGES and not Path(spec).exists():
        return data.load_image(data.sample_image(spec), backbone.input_size)
    return data.load_image(spec, backbone.input_size)


def cam_head_for(backbone, cam_data: str | None, progress: bool = True):
    """A CAM head for the backbone: trained on fresh shapes for minivgg, on a labelled folder otherwise."""
    from . import cam, data

    if cam_data:
        folder = data.load_folder(cam_data, backbone.input_size, progress=progress)
        return cam.train_cam_head(backbone, folder.images, folder.labels, folder.class_names, progress=progress)
    if backbone.name != "minivgg":
        raise ValueError("CAM on vgg16 needs a retrained head: pass --cam-data ROOT with one sub-folder per class")
    shapes = data.make_shapes(600, seed=7)
    return cam.train_cam_head(backbone, shapes.images, shapes.labels, data.CLASSES, progress=progress)


def explain_one(backbone, image, method: str, target=None, cam_data=None, progress=True):
    """Run one method on one image; return (Explanation, class names the target indexes)."""
    from . import cam, gradcam, guided_backprop, keras_to_torch, occlusion, saliency

    method = method_name(method)
    batch = image[None]
    if method == "occlusion":
        return occlusion.occlusion(backbone, batch, target, progress=progress), backbone.class_names
    if method == "saliency":
        return saliency.saliency(backbone, batch, target), backbone.class_names
    if method == "gradcam":
        return gradcam.gradcam(backbone, batch, target), backbone.class_names
    if method == "guided_backprop":
        twin = keras_to_torch.to_torch(backbone.model)
        return guided_backprop.guided_backprop(twin, backbone.tensor(batch), target, preprocessed=True), backbone.class_names
    if method == "guided_gradcam":
        return guided_backprop.guided_gradcam(backbone, batch, target), backbone.class_names
    if method == "cam":
        head = cam_head_for(backbone, cam_data, progress)
        return cam.cam(head, batch, target), head.class_names
    raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("explain", help="explain one image with one method and write the figure",
                              description=__doc__)
    p.add_argument("image", help="an image file, a sample photo name (chelsea, coffee...) or shapes:N")
    p.add_argument("--method", "-m", required=True, type=method_name, choices=METHODS,
                   help="the method (guided-backprop and guided-gradcam may also be written with a hyphen)")
    p.add_argument("--backbone", default="minivgg", choices=["minivgg", "vgg16"])
    p.add_argument("--class", dest="target", type=int, default=None, help="class index to explain (default: top-1)")
    p.add_argument("--cam-data", help="for --method cam on vgg16: a folder with one sub-folder of images per class")
    p.add_argument("-o", "--output", default="explanation.png",
                   help="where to write the figure; its extension names the format (.png, .pdf, .svg, .jpg...)")
    p.set_defaults(func=run)
    return p


def check_output(path) -> tuple[Path, str]:
    """The figure's destination and format (its extension), checked before any work: a one-line ValueError
    for a folder, a missing folder, or an extension matplotlib cannot write."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(path)
    if out.is_dir():
        raise ValueError(f"-o {out} is a folder: name a file in it, e.g. -o {out / 'explanation.png'}")
    if not out.parent.is_dir():
        raise ValueError(f"-o {out}: there is no folder {out.parent}: create it or choose another path")
    formats = FigureCanvasBase.get_supported_filetypes()
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in formats:
        shown = f"the extension {out.suffix!r}" if out.suffix else "no extension"
        raise ValueError(f"-o {out} has {shown}: end the name with one of "
                         f"{', '.join('.' + f for f in sorted(formats))} (e.g. .png)")
    return out, fmt


def save_figure(fig, out: Path, fmt: str) -> None:
    """Write the figure to a temporary file beside ``out`` and move it into place: never a half-written file,
    and no temporary file left behind, whatever happens (an error, Ctrl-C)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp_name, format=fmt, dpi=110)
        os.replace(tmp_name, out)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def run(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import models, plotting

    out, fmt = check_output(args.output)  # before loading a model: a bad -o fails at once
    backbone = models.load(args.backbone)
    image = load_input(backbone, args.image)
    print(f"top-5 predictions of {backbone.name}:")
    for rank, (index, name, prob) in enumerate(backbone.top_k(image, 5), start=1):
        print(f"  {rank}. {name:<24} (class {index:>4})  p = {prob:.4f}")
    explanation, class_names = explain_one(backbone, image, args.method, args.target, args.cam_data)
    target = int(explanation.targets[0])
    rgb = explanation.raw[0] if explanation.raw is not None and explanation.raw.ndim == 4 else None
    label = "probability of the class" if args.method == "occlusion" else "relevance"
    fig = plotting.explanation_figure(image, explanation.maps[0], f"{class_names[target]} (class {target})",
                                      args.method, rgb_map=rgb, label=label)
    try:
        save_figure(fig, out, fmt)
    finally:
        plt.close(fig)
    print(f"{args.method} map of {class_names[target]!r} written to {out}")
    return 0
