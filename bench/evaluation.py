"""Cost of the stage-08 evaluation table (methods and baselines x metrics) on minivgg, split by metric.

    .venv/bin/python bench/evaluation.py [--n 200] [--steps 16] [--threads 2]

Each part is timed once (the table is too slow to repeat) and given as a ratio to ONE forward pass of the
same N images (minivgg, batches of 64, the best of 5), so the numbers carry over to other machines:
"maps" computes every method's and baseline's maps once; "deletion"/"insertion" run N * (steps + 1) forwards
per row; "randomisation" re-explains every row after the cascade reaches fc1 and block5_conv3. The table
itself is printed too. Measured ratios go in the README, not here.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

warnings.filterwarnings("ignore")

import labkit  # noqa: E402,F401


def forward_seconds(backbone, images, repeats: int = 5) -> float:
    import torch

    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            for s in range(0, len(images), 64):
                backbone.model(backbone.tensor(images[s : s + 64]))
            best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    a = p.parse_args(argv)
    import torch

    from labkit import data, evaluation, models
    from labkit.explain import cam_head_for

    if a.threads:
        torch.set_num_threads(a.threads)
    backbone = models.load("minivgg")
    test = data.make_shapes(a.n, seed=1)
    t0 = time.perf_counter()
    head = cam_head_for(backbone, None, progress=False)
    head_s = time.perf_counter() - t0
    fwd = forward_seconds(backbone, test.images)
    t0 = time.perf_counter()
    table = evaluation.evaluate_methods(backbone, test.images, test.labels, test.masks, steps=a.steps, cam_head=head,
                                        progress=False)
    total = time.perf_counter() - t0
    print(table.format())
    print()
    print(f"minivgg, N = {a.n} images, {a.steps} deletion/insertion steps, torch threads {torch.get_num_threads()}")
    print(f"one forward pass of the {a.n} images: {fwd * 1000:.0f} ms")
    print(f"{'part':<20} {'seconds':>8} {'x forward':>10}")
    for part, s in table.seconds.items():
        print(f"{part:<20} {s:8.2f} {s / fwd:10.0f}")
    print(f"{'table (total)':<20} {total:8.2f} {total / fwd:10.0f}")
    print(f"{'CAM head (once)':<20} {head_s:8.2f} {head_s / fwd:10.0f}  (trained on 600 shapes, not part of the table)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
