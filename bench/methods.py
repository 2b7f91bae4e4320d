"""Speed of labkit's explanation methods against captum and pytorch-grad-cam, in one process.

    make bench            # or: .venv/bin/python bench/methods.py [--quick]

For each backbone (minivgg 96x96; VGG16 with random weights at 224x224), batch size (1, 16) and method, every
implementation explains the same images on the same torch model (labkit's torch twin of the Keras model,
so that all three libraries run identical arithmetic) and the script prints: seconds per call (median of a
few runs), the ratio to the fastest peer (< 1 means labkit is faster), and the cost in forward passes of
the same batch, timed in turns with the method (see ``measure``). Occlusion runs one image per call on
VGG16, in the batch-1 configuration only; its budget is positions x one forward pass of the batch explained.
labkit on the Keras model itself (how the course runs it) is printed too, for Grad-CAM and saliency, its
cost counted in forward passes of the Keras model. Every Grad-CAM row ends with maps at the input's
resolution (captum's is interpolated, bilinear, as labkit's). labkit runs a large batch in passes of
``labkit.attribution.images_per_pass`` images (16 at 96 x 96, 2 at 224 x 224 on a CPU), as a user gets it;
the peers take the batch in one pass, as they do by default. The "plain torch (floor)" rows are the same
arithmetic written out in a few lines of torch, with nothing checked (guided backprop's: hooks on every
ReLU's backward node, planted and removed in the call): what no library can beat by much.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")

import labkit  # noqa: E402,F401  (pins the Keras backend)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from labkit import attribution, data, gradcam, guided_backprop, keras_to_torch, models, occlusion, saliency  # noqa: E402


def measure(fns: dict, repeats: int, seconds: float = 3.0) -> dict:
    """Median seconds per call of each function, timed in turns, in a new order each round (b, a, c, c, a, b, ...).

    ``repeats`` rounds at least; fast functions get more rounds, up to about ``seconds`` in all.

    Taking turns spreads the machine's slow spells over every implementation instead of one, so the
    ratios are steadier than timing each one in a row; shuffling the order (seeded: the same in every
    run) keeps any one implementation from always running right after another, whose caches it inherits.
    """
    start = time.perf_counter()
    for fn in fns.values():
        fn()  # warm-up: first calls build graphs and caches
    # At least ``repeats`` rounds, more (up to ~``seconds``) when a round is fast: a median of 3 calls of
    # 2 ms each moves by 5% from run to run, one of 100 by about 1%.
    rounds = max(repeats, min(300, int(seconds / (time.perf_counter() - start))))
    times = {name: [] for name in fns}
    order, rng = list(fns), random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def run(backbone_name: str, batch: int, repeats: int, rows: list):
    from captum.attr import GuidedBackprop, LayerAttribution, LayerGradCam, Occlusion, Saliency
    from pytorch_grad_cam import GradCAM as PGCGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    backbone = models.load(backbone_name, weights=None) if backbone_name == "vgg16" else models.load("minivgg")
    twin = keras_to_torch.to_torch(backbone.model)
    images, _ = data.demo_images(backbone, n=min(batch, 4))
    images = np.concatenate([images] * (-(-batch // len(images))))[:batch]
    x = backbone.tensor(images)
    with torch.no_grad():
        targets = twin.logits(x).argmax(1)
    target_list = targets.tolist()
    layer_name = backbone.last_conv_layer
    layer = twin.layer(layer_name)
    h = backbone.input_size[0]

    def forward(inputs):
        with torch.no_grad():
            twin.logits(inputs)

    def keras_forward():
        with torch.no_grad():
            backbone.model(x)

    def add(method, impls, budget, unit_batch=x, positions=None):
        """Time the implementations and the forward passes they are counted in, in turns; add their rows.

        The cost unit is one forward pass of the twin on ``unit_batch`` (times ``positions`` for occlusion);
        the "labkit (keras)" rows count in forward passes of the Keras model itself.
        """
        keras_rows = any(name.startswith("labkit (keras)") for name in impls)
        units = {"forward": lambda: forward(unit_batch), **({"keras forward": keras_forward} if keras_rows else {})}
        t = measure({**units, **impls}, repeats)
        fwd, fwd_keras = t.pop("forward"), t.pop("keras forward", None)
        fastest_peer = min(v for name, v in t.items() if not name.startswith(("labkit", "plain torch")))
        for name, v in t.items():
            unit = (fwd_keras if name.startswith("labkit (keras)") else fwd) * (positions or 1)
            rows.append((backbone_name, len(unit_batch), method, name, v, v / fastest_peer, v / unit, budget))
        return fwd, fwd_keras

    # The floor: the same arithmetic written out in torch, in one pass, with nothing checked or kept. Not a peer.
    up_to, after = twin.split(twin.output_of[layer_name])

    def plain_saliency():  # also guided backprop's, inside its hooks
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(twin.logits(xg).gather(1, targets[:, None]).sum(), xg)
        return g.abs().amax(-1)

    def plain_gradcam():
        with torch.no_grad():
            a = up_to(x)
        a.requires_grad_(True)
        (g,) = torch.autograd.grad(after(a).gather(1, targets[:, None]).sum(), a)
        with torch.no_grad():
            cam = torch.relu((g.mean((2, 3))[:, :, None, None] * a).sum(1))
            return torch.nn.functional.interpolate(cam[:, None], size=(h, h), mode="bilinear")

    relus = [m for m in twin.modules() if isinstance(m, torch.nn.ReLU)]

    def clamp(grad_inputs, grad_outputs):
        return (grad_inputs[0].clamp(min=0),)

    def plant(module, inputs, output):
        output.grad_fn.register_hook(clamp)

    def plain_guided_backprop():
        handles = [relu.register_forward_hook(plant) for relu in relus]
        try:
            return plain_saliency()
        finally:
            for handle in handles:
                handle.remove()

    # Saliency: |d logit / d x|, max over channels.
    sal_captum = Saliency(twin.logits)
    fwd, fwd_keras = add("saliency", {
        "labkit": lambda: saliency.saliency(twin, x, targets, preprocessed=True),
        "labkit (keras)": lambda: saliency.saliency(backbone, x, targets, preprocessed=True),
        "captum": lambda: sal_captum.attribute(x, target=targets, abs=True).amax(-1),
        "plain torch (floor)": plain_saliency,
    }, "<= 2.5 fwd")

    # Grad-CAM at the last conv layer.
    lgc = LayerGradCam(twin.logits, layer)
    # pytorch-grad-cam builds NCHW inputs; the twin's NCHW view shares its modules. Its weights are frozen,
    # so the input must ask for a gradient or there is nothing to back-propagate.
    pgc = PGCGradCAM(model=twin.as_nchw(logits=True), target_layers=[layer])
    pgc_targets = [ClassifierOutputTarget(t) for t in target_list]
    x_nchw = x.permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    add("gradcam", {
        "labkit": lambda: gradcam.gradcam(twin, x, targets, layer=layer_name, preprocessed=True),
        "labkit (keras)": lambda: gradcam.gradcam(backbone, x, targets, preprocessed=True),
        # captum's map is at the layer's resolution: interpolated to the input's, as labkit's and pytorch-grad-cam's
        "captum": lambda: LayerAttribution.interpolate(
            torch.relu(lgc.attribute(x, target=targets, relu_attributions=False)), (h, h), "bilinear"),
        "pytorch-grad-cam": lambda: pgc(input_tensor=x_nchw, targets=pgc_targets),
        "plain torch (floor)": plain_gradcam,
    }, "<= 1.2 fwd")
    pgc.activations_and_grads.release()

    # Guided backprop.
    gbp = GuidedBackprop(twin)
    add("guided_backprop", {
        "labkit": lambda: guided_backprop.guided_backprop(twin, x, targets, preprocessed=True),
        "captum": lambda: gbp.attribute(x, target=targets),
        "plain torch (floor)": plain_guided_backprop,
    }, "<= 2.5 fwd")

    print(f"# {backbone_name} batch {batch}: one forward {fwd * 1000:.1f} ms (twin), {fwd_keras * 1000:.1f} ms (Keras)",
          flush=True)

    # Occlusion: the whole batch on minivgg; one image per call on VGG16 (16 positions), measured once, in the
    # batch-1 configuration (at batch 16 it would repeat the same row). labkit runs its default number of
    # copies per pass; captum runs its default (1 perturbation per pass) and the same forward batch as labkit.
    if backbone_name == "vgg16" and batch > 1:
        return
    size = h // 4
    occ_x, occ_t = (x[:1], targets[:1]) if backbone_name == "vgg16" else (x, targets)
    positions = ((h - size) // size + 1) ** 2
    per_pass = attribution.images_per_pass(h, h, occ_x.device)  # labkit's default
    occ = Occlusion(twin)
    same = max(1, per_pass // len(occ_x))  # captum's perturbations_per_eval runs len(x) images per perturbation
    window = dict(sliding_window_shapes=(size, size, 3), strides=(size, size, 3), baselines=0, target=occ_t)
    add("occlusion", {
        "labkit": lambda: occlusion.occlusion(twin, occ_x, occ_t, size=size, stride=size, progress=False,
                                              preprocessed=True),
        "captum (1 per pass)": lambda: occ.attribute(occ_x, **window),
        f"captum ({same} per pass)": lambda: occ.attribute(occ_x, perturbations_per_eval=same, **window),
    }, f"<= 1.1 x {positions} pos", unit_batch=occ_x, positions=positions)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="minivgg only, 2 repeats")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    configs = [("minivgg", 1), ("minivgg", 16)] + ([] if a.quick else [("vgg16", 1), ("vgg16", 16)])
    for name, batch in configs:
        run(name, batch, 2 if a.quick else a.repeats, rows)
    print(f"\ndevice: {models.device()}, torch threads: {torch.get_num_threads()}")
    header = f"{'backbone':<8} {'batch':>5}  {'method':<16} {'implementation':<22} {'seconds':>9} {'vs fastest peer':>15} {'cost':>10}  target"
    print(header)
    print("-" * len(header))
    for backbone, batch, method, name, t, ratio, cost, budget in rows:
        unit = "x budget" if method == "occlusion" else "fwd"  # budget: positions x one forward of the batch
        print(f"{backbone:<8} {batch:>5}  {method:<16} {name:<22} {t:>9.4f} {ratio:>14.2f}x {cost:>6.2f} {unit:<3}  {budget}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
