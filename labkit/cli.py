"""The `labkit` command: info, fetch, evaluate, explain, release."""

from __future__ import annotations

import argparse
import platform
import sys


def _info(args) -> int:
    import keras
    import torch

    import labkit
    from labkit import models

    dev = models.device()
    gpu = f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""
    print(f"labkit      {labkit.__version__}")
    print(f"python      {platform.python_version()}")
    print(f"torch       {torch.__version__}")
    print(f"keras       {keras.__version__} (backend: {keras.backend.backend()})")
    print(f"device      {dev}{gpu}")
    for name in models.BACKBONES + models.variants():
        print(f"{name:<11} {models.backbone_state(name)}")
    return 0


def _fetch(args) -> int:
    from labkit import models

    if args.what == "vgg16":
        path = models.fetch_vgg16(args.source, sha256=args.sha256)
        print(f"vgg16 weights verified and cached at {path}")
        print(f"sha256 {models.sha256_of(path)}  (pin it offline with LABKIT_VGG16_SHA256)")
        return 0
    from labkit import why_interpretability

    print(why_interpretability.fetch_newsgroups())
    return 0


def _evaluate(args) -> int:
    from labkit import models

    backbone = models.load(args.backbone)
    acc = models.evaluate(backbone, n=args.n, seed=args.seed)
    print(f"{args.backbone} on {args.n} fresh shapes images (seed {args.seed})")
    print(f"accuracy: {acc:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit", description="Tools for the CNN interpretability lab.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="versions, Keras backend, device and the state of each backbone")
    s.set_defaults(func=_info)

    s = sub.add_parser("fetch", help="download data for an offline room: VGG16's ImageNet weights, 20 newsgroups")
    s.add_argument("what", choices=["vgg16", "newsgroups"])
    s.add_argument("--from", dest="source", help="a URL or local file to take the VGG16 weights from")
    s.add_argument("--sha256", help="the sha256 the VGG16 weights file must have (default: check Keras' md5)")
    s.set_defaults(func=_fetch)

    s = sub.add_parser("evaluate", help="test accuracy of minivgg on freshly generated shapes")
    s.add_argument("backbone", choices=["minivgg"])
    s.add_argument("--n", type=int, default=2000, help="number of test images (default 2000)")
    s.add_argument("--seed", type=int, default=1, help="dataset seed (default 1, never used in training)")
    s.set_defaults(func=_evaluate)

    from labkit import explain, release

    explain.add_parser(sub)
    release.add_parser(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Bad input and missing files are the user's to fix: one line, no traceback.
        print(f"labkit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
