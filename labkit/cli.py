"""The `labkit` command: info, fetch, evaluate, explain, release.

Startup rule: `labkit --help` and `labkit SUBCOMMAND --help` answer in a fraction of a second, so neither this
module nor any module in :data:`SUBCOMMAND_MODULES` imports torch, Keras, nbformat or numpy at its top (a
second or more each). A subcommand imports them inside the function it dispatches to. ``import labkit`` is cheap
(it pins the Keras backend and loads its submodules on first use). bench/cli.py measures the startup time;
tests/test_cli_errors.py checks that building the parser imports none of them.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys

# Modules that register their own subcommand with ``add_parser(subparsers)`` (the parser sets ``func``).
# Each imports only the standard library at its top: see the startup rule above. Add a module here to register one.
SUBCOMMAND_MODULES = ("labkit.explain", "labkit.release", "labkit.grading")


def _info(args) -> int:
    import keras
    import torch

    import labkit
    from labkit import models

    dev = models.device()
    gpu = f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""
    names = models.BACKBONES + models.variants()
    width = max(11, *(len(name) for name in names))
    rows = [("labkit", labkit.__version__), ("python", platform.python_version()), ("torch", torch.__version__),
            ("keras", f"{keras.__version__} (backend: {keras.backend.backend()})"), ("device", f"{dev}{gpu}")]
    rows += [(name, models.backbone_state(name)) for name in names]
    for key, value in rows:
        print(f"{key:<{width}} {value}")
    return 0


def _fetch(args) -> int:
    from labkit import models

    if args.what == "vgg16":
        path = models.fetch_vgg16(args.source, sha256=args.sha256)
        print(f"vgg16 weights verified and cached at {path}")
        print(f"sha256 {models.sha256_of(path)}  (pin it offline with LABKIT_VGG16_SHA256)")
        return 0
    from labkit import why_interpretability

    try:
        print(why_interpretability.fetch_newsgroups())
    except RuntimeError as exc:  # its download failure, already one line with the fix
        raise OSError(str(exc)) from None
    return 0


def _evaluate(args) -> int:
    if args.n <= 0:
        raise ValueError(f"--n must be a positive number of test images, got {args.n}")
    from labkit import models

    backbone = models.load(args.backbone)
    if not args.methods:
        cue = models.minivgg_metadata(args.backbone).get("cue")
        if cue:  # a model trained with a tag on its images: accuracy with the tag as in training, and without it
            from labkit import debugging

            accs = debugging.spurious_accuracy(backbone, n=args.n, seed=args.seed, cue_class=cue["cue_class"],
                                               p_class=cue["p_class"], p_other=cue["p_other"])
            print(f"{args.backbone} on {args.n} fresh shapes images (seed {args.seed})")
            print(f"accuracy with the tag as in training ({cue['p_class']:.0%} of {cue['cue_class']}s, "
                  f"{cue['p_other']:.0%} of the others): {accs['train']:.4f}")
            print(f"accuracy with the tag removed:            {accs['none']:.4f}")
            print(f"accuracy with the tag on every image:     {accs['all']:.4f}")
            return 0
        acc = models.evaluate(backbone, n=args.n, seed=args.seed)
        print(f"{args.backbone} on {args.n} fresh shapes images (seed {args.seed})")
        print(f"accuracy: {acc:.4f}")
        return 0
    from labkit import data, evaluation

    methods = evaluation.METHODS if "all" in args.methods else tuple(args.methods)
    test = data.make_shapes(args.n, seed=args.seed, size=backbone.input_size[0], progress=True)
    random_model = None
    if args.random_model:
        random_model = models.load(args.random_model)
    table = evaluation.evaluate_methods(backbone, test.images, test.labels, test.masks, methods=methods,
                                        random_model=random_model, steps=args.steps, progress=True)
    print(f"{args.backbone} on {table.n} fresh shapes images (seed {args.seed}), explaining the true class")
    print(table.format())
    return 0


def _minivgg_names() -> list[str]:
    """minivgg and its variants, by their metadata files in data/ (as models.variants(), without importing Keras)."""
    import os
    from pathlib import Path

    data = Path(os.environ.get("LABKIT_DATA", Path(__file__).resolve().parent.parent / "data"))
    return ["minivgg"] + sorted(p.name[: -len(".json")] for p in data.glob("minivgg_*.json"))


# the methods `evaluate --methods` knows (labkit.evaluation.METHODS; not imported here: --help stays fast)
_EVAL_METHODS = ("occlusion", "saliency", "cam", "gradcam", "guided_backprop", "guided_gradcam")


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

    s = sub.add_parser("evaluate", help="test accuracy of minivgg, or the table of metrics of the explanation methods")
    s.add_argument("backbone", choices=_minivgg_names(),
                   help="minivgg or one of its variants in data/ (minivgg_spurious: with and without its tag)")
    s.add_argument("--n", type=int, default=2000, help="number of test images (default 2000)")
    s.add_argument("--seed", type=int, default=1, help="dataset seed (default 1, never used in training)")
    s.add_argument("--methods", nargs="+", metavar="M", choices=("all",) + _EVAL_METHODS,
                   help="print the evaluation table (pointing game, deletion, insertion, randomisation) of these "
                        f"methods and the baselines instead of the accuracy: all, or some of {' '.join(_EVAL_METHODS)}")
    s.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (default 16)")
    s.add_argument("--random-model", metavar="NAME",
                   help="a model trained on permuted labels (e.g. minivgg_randlabels): adds the data randomisation test")
    s.set_defaults(func=_evaluate)

    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    return p


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures that are the user's to fix, reported in one line: bad input (ValueError, including PIL's and
    labkit's own), the file system and the network (OSError: a missing or unreadable file, a folder given for a
    file, a full disk, a refused connection), unusable weights and a wrong Keras backend. Anything else is a bug
    in labkit and keeps its traceback."""
    from labkit import BackendError, WeightsError

    return (ValueError, OSError, WeightsError, BackendError)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        # Ctrl-C: every subcommand writes through temporary files, removed on the way out, so nothing is half-written.
        print(f"labkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except expected_errors() as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"labkit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
